"""Exporters: specscope's numbers where training logs already go, TensorBoard, Weights & Biases and MLflow.

Live, each measurement as the monitor writes it (rank 0 alone in a distributed job)::

    ss.Monitor(model, "runs/a", probes=[ss.probes.Weights(every=50)], log_to=["tensorboard"])
    ss.Monitor(model, "runs/a", probes=[...], log_to=[ss.export.TensorBoardSink("runs/tb"), wandb_run])

After the fact, a stored run: :func:`export_run` (``specscope export RUN --to tensorboard``).

One module per backend (:mod:`~specscope.export.tensorboard`, :mod:`~specscope.export.wandb`,
:mod:`~specscope.export.mlflow`), each a sink of the monitor's protocol (:mod:`specscope.sinks`) that registers
itself under its name when this package is imported; :mod:`~specscope.export.common` names the tags. The backends'
own packages are imported only when a sink is opened.
"""
from __future__ import annotations

from .common import Exporter, points, scalar_tag, tag
from .mlflow import MlflowSink
from .run import export_run
from .tensorboard import TensorBoardSink
from .wandb import WandbSink

__all__ = ["Exporter", "MlflowSink", "TensorBoardSink", "WandbSink", "export_run", "points", "scalar_tag", "tag"]
