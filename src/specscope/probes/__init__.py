"""What to read from a live model, and when: ``ss.probes.Weights(every=25)``,
``ss.probes.Weights(every=ss.probes.log_spaced(1, 10000))`` (dense early probing)."""
from .base import NEEDS, Measurement, Probe, ProbeContext
from .activations import Activations, make_pool
from .gradients import Gradients
from .schedule import Schedule, as_schedule, at, every, log_spaced, log_spaced_steps, paired
from .step_gradients import StepGradients
from .trajectory import Trajectory
from .weights import Weights

__all__ = ["NEEDS", "Activations", "Gradients", "Measurement", "Probe", "ProbeContext", "Schedule", "StepGradients",
           "Trajectory", "Weights", "as_schedule", "at", "every", "log_spaced", "log_spaced_steps", "make_pool",
           "paired"]
