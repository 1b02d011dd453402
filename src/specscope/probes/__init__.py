"""What to read from a live model. ``ss.probes.Weights(every=25)``."""
from .base import Measurement, Probe, ProbeContext
from .weights import Weights

__all__ = ["Measurement", "Probe", "ProbeContext", "Weights"]
