"""What to read from a live model. ``ss.probes.Weights(every=25)``."""
from .base import Measurement, Probe, ProbeContext
from .activations import Activations, make_pool
from .gradients import Gradients
from .step_gradients import StepGradients
from .trajectory import Trajectory
from .weights import Weights

__all__ = ["Activations", "Gradients", "Measurement", "Probe", "ProbeContext", "StepGradients", "Trajectory", "Weights", "make_pool"]
