"""Accumulators in float64: streaming covariance (mergeable), per-sample gradient Gram (mergeable), the
rolling-window Gram of parameter updates and its CountSketch; each a :class:`Stream` with declared state that
merges, and reduces across processes, in one place."""
from .covariance import StreamingCovariance
from .grad_gram import PerSampleGradGram, RowGram
from .state import Stream
from .trajectory import CountSketch, TrajectoryWindow

__all__ = ["CountSketch", "PerSampleGradGram", "RowGram", "Stream", "StreamingCovariance",
           "TrajectoryWindow"]
