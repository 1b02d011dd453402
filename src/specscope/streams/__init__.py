"""Mergeable accumulators: streaming covariance, per-sample gradient Gram."""
from .covariance import StreamingCovariance
from .grad_gram import PerSampleGradGram, RowGram
from .trajectory import CountSketch, TrajectoryWindow

__all__ = ["CountSketch", "PerSampleGradGram", "RowGram", "StreamingCovariance", "TrajectoryWindow"]
