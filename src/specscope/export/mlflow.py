"""MLflow: specscope's metrics as MLflow metrics at the monitor's step (needs ``mlflow-skinny``, or ``mlflow``:
``pip install 'specscope[mlflow]'``).

    ss.Monitor(model, "runs/a", probes=[...], log_to=["mlflow"])     # the active run, else a new one (see below)
    ss.Monitor(model, "runs/a", probes=[...], log_to=[mlflow.active_run()])
    ss.Monitor(model, "runs/a", probes=[...], log_to=[ss.export.MlflowSink(run_id=..., client=MlflowClient(uri))])

MLflow has no histograms: the stored spectra are not exported to it (their summary metrics are). Metrics go
through ``MlflowClient.log_batch``, one batch per measurement (MLflow's limit of 1000 metrics per call kept).

**Where a new run goes.** Without an active run, the sink starts a run of experiment ``specscope`` named after
the specscope run, at ``tracking_uri``: a URI as MLflow reads it (``sqlite:///...``, ``http://...``,
``file:...``), or a directory, which becomes MLflow's local file store there. Default: ``$MLFLOW_TRACKING_URI``,
else ``<run_dir>/mlflow``. MLflow 3 keeps its file store only behind ``MLFLOW_ALLOW_FILE_STORE=true``; for a
directory the sink sets that variable in this process unless it is set already. A run the sink started is ended
(``FINISHED``) by :meth:`MlflowSink.close`; the user's is left running.

Tags: :mod:`specscope.export.common` (every character of them is one MLflow takes).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..sinks import register
from .common import PREFIX, Exporter

BATCH = 1000  # MLflow's most metrics per log_batch
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _mlflow() -> Any:
    """The ``mlflow`` module, or a :class:`ConfigError` when it is missing."""
    try:
        import mlflow
    except ImportError as exc:
        raise ConfigError(f"MLflow export needs mlflow-skinny or mlflow ({exc}): pip install 'specscope[mlflow]'") from None
    return mlflow


def as_tracking_uri(where: str | os.PathLike) -> str:
    """``where`` as an MLflow tracking URI: a URI as it is; a directory as a ``file:`` URI of its absolute path
    (setting ``MLFLOW_ALLOW_FILE_STORE=true`` in this process unless it is set, as MLflow 3 requires for its file
    store). Returns the str."""
    text = str(where)
    if _SCHEME.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):  # a URI, not a Windows drive
        uri = text
    else:
        uri = Path(text).expanduser().resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


class MlflowSink(Exporter):
    """Export into MLflow run ``run_id`` through ``client`` (an ``MlflowClient``; default one for ``tracking_uri``
    or MLflow's current URI); without ``run_id``, into the active run (``mlflow.active_run()``, when no
    ``tracking_uri`` is given), else into a new run of ``experiment`` named ``run_name`` at ``tracking_uri`` (see
    the module docstring), ended by :meth:`close`."""

    histograms = False

    def __init__(self, run_id: str | None = None, tracking_uri: str | os.PathLike | None = None, client: Any = None,
                 experiment: str = PREFIX, run_name: str | None = None):
        mlflow = _mlflow()
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        uri = as_tracking_uri(tracking_uri) if tracking_uri is not None else None
        if run_id is None and uri is None and (active := mlflow.active_run()) is not None:
            run_id = active.info.run_id
        if client is None:
            client = MlflowClient(uri) if uri is not None else MlflowClient()
        if run_id is None:
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
            run_id = client.create_run(exp_id, run_name=run_name).info.run_id
            self.owns = True
        self.client = client
        self.run_id = run_id

    @staticmethod
    def accepts(obj: Any) -> bool:
        """Whether ``obj`` is an MLflow run (``mlflow.active_run()``, ``mlflow.start_run()``, ``client.get_run()``:
        an object of the ``mlflow`` package with ``info.run_id``)."""
        return type(obj).__module__.split(".")[0] == "mlflow" and hasattr(getattr(obj, "info", None), "run_id")

    @classmethod
    def make(cls, target: Any = None, *, run_dir: Any = None, run_name: str | None = None, config: dict | None = None,
             **options: Any) -> "MlflowSink":
        """The sink of ``log_to=["mlflow"]`` (the active run, else a new run named after the specscope run at
        ``options["tracking_uri"]``, default ``$MLFLOW_TRACKING_URI`` else ``<run_dir>/mlflow``), of
        ``("mlflow", {"client": ..., "run_id": ...})``, or of an MLflow run ``target``: a :class:`MlflowSink`."""
        if target is not None:
            return cls(run_id=target.info.run_id)
        options["run_name"] = run_name
        mlflow = _mlflow()
        if options.get("run_id") is None and options.get("tracking_uri") is None and mlflow.active_run() is None:
            default = os.environ.get("MLFLOW_TRACKING_URI") or (Path(run_dir) / "mlflow" if run_dir is not None else None)
            if default is None:
                raise ConfigError("mlflow: no active run, no tracking_uri and no run directory to put a store in")
            options["tracking_uri"] = default
        return cls(**options)

    def emit(self, step: int, scalars: dict[str, float], histograms: dict[str, np.ndarray]) -> None:
        """``log_batch`` the scalars at ``step`` (in batches of :data:`BATCH`; ``histograms`` is empty: MLflow has
        none). Returns None."""
        now = int(time.time() * 1000)
        metrics = [self._metric(tag, value, now, int(step)) for tag, value in scalars.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])

    def close(self) -> None:
        """End the run (``FINISHED``) when the sink started it; returns None."""
        if self.owns:
            self.client.set_terminated(self.run_id)


register("mlflow", MlflowSink.make, MlflowSink.accepts)
