"""Mergeable accumulators: streaming covariance, per-sample gradient Gram."""
from .covariance import StreamingCovariance
from .grad_gram import PerSampleGradGram

__all__ = ["PerSampleGradGram", "StreamingCovariance"]
