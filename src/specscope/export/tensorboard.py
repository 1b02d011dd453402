"""TensorBoard: specscope's metrics as scalars and its stored spectra as histograms, through the official
``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package: ``pip install 'specscope[tensorboard]'``).

    ss.Monitor(model, "runs/a", probes=[...], log_to=["tensorboard"])         # into runs/a/tensorboard
    ss.Monitor(model, "runs/a", probes=[...], log_to=[ss.export.TensorBoardSink("runs/tb")])
    ss.Monitor(model, "runs/a", probes=[...], log_to=[writer])                  # the user's own SummaryWriter

Tags: :mod:`specscope.export.common`; the step is the monitor's, the axis of the user's own ``add_scalar`` calls.
A writer the user handed in is flushed, never closed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..sinks import register
from .common import Exporter


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter`` (the class), or a :class:`ConfigError` when the ``tensorboard``
    package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"TensorBoard export needs the tensorboard package ({exc}): pip install "
                          "'specscope[tensorboard]'") from None
    return SummaryWriter


class TensorBoardSink(Exporter):
    """Export into a TensorBoard log directory ``log_dir`` (a new ``SummaryWriter``, closed by :meth:`close`), or
    into ``writer``, a ``SummaryWriter`` of the user's (``torch.utils.tensorboard`` or ``tensorboardX``; flushed,
    never closed). Metrics go to ``add_scalar``, spectra to ``add_histogram`` (the stored values: singular values
    or eigenvalues)."""

    def __init__(self, log_dir: str | os.PathLike | None = None, writer: Any = None):
        if (log_dir is None) == (writer is None):
            raise ConfigError("TensorBoardSink: give log_dir or writer (one of them)")
        if writer is None:
            writer = summary_writer_class()(log_dir=str(log_dir))
            self.owns = True
        self.writer = writer

    @staticmethod
    def accepts(obj: Any) -> bool:
        """Whether ``obj`` is a SummaryWriter (any object with ``add_scalar`` and ``add_histogram``)."""
        return callable(getattr(obj, "add_scalar", None)) and callable(getattr(obj, "add_histogram", None))

    @classmethod
    def make(cls, target: Any = None, *, run_dir: str | os.PathLike | None = None, log_dir: str | None = None,
             **_: Any) -> "TensorBoardSink":
        """The sink of ``log_to=["tensorboard"]`` (into ``log_dir``, default ``<run_dir>/tensorboard``) or of a
        SummaryWriter ``target``: a :class:`TensorBoardSink`."""
        if target is not None:
            return cls(writer=target)
        if log_dir is None and run_dir is None:
            raise ConfigError("tensorboard: no log_dir and no run directory to put it in")
        return cls(log_dir=log_dir if log_dir is not None else Path(run_dir) / "tensorboard")

    def emit(self, step: int, scalars: dict[str, float], histograms: dict[str, np.ndarray]) -> None:
        """``add_scalar`` / ``add_histogram`` each tag at ``step``; returns None."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        for tag, values in histograms.items():
            self.writer.add_histogram(tag, values, step)

    def flush(self) -> None:
        """Write the events to disk; returns None."""
        self.writer.flush()

    def close(self) -> None:
        """Close the writer when the sink opened it, else flush it; returns None."""
        if self.owns:
            self.writer.close()
        else:
            self.writer.flush()


register("tensorboard", TensorBoardSink.make, TensorBoardSink.accepts)
