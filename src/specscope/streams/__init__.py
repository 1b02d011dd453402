"""Accumulators in float64: streaming covariance (mergeable), per-sample gradient Gram (mergeable), the
rolling-window Gram of parameter updates and its CountSketch."""
from .covariance import StreamingCovariance
from .grad_gram import PerSampleGradGram, RowGram
from .trajectory import CountSketch, TrajectoryWindow

__all__ = ["CountSketch", "PerSampleGradGram", "RowGram", "StreamingCovariance", "TrajectoryWindow"]
