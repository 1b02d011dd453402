"""What to read from a live model. ``ss.probes.Weights(every=25)``."""
from .base import Measurement, Probe, ProbeContext
from .lens import Activations, Gradients, make_pool
from .trajectory import Trajectory
from .weights import Weights

__all__ = ["Activations", "Gradients", "Measurement", "Probe", "ProbeContext", "Trajectory", "Weights", "make_pool"]
