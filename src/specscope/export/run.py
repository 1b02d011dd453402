"""After the fact: a stored run's metrics, spectra and training scalars exported in one go (``specscope export``).

Each (step, probe) of the run store becomes one measurement written through the backend's sink, as the monitor
would have written it live (same tags, same steps); the training scalars (``loss``, ``probe_seconds/<probe>``, ...)
follow as ``specscope/scalars/<name>`` at their steps (the last value of a step when one was logged twice).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import BACKENDS, Exporter


def _sink(to: str, run: Any, out: str | os.PathLike) -> Exporter:
    """A new sink of backend ``to`` writing to ``out`` for ``run`` (never the user's active W&B / MLflow run)."""
    if to == "tensorboard":
        from .tensorboard import TensorBoardSink

        return TensorBoardSink(log_dir=out)
    if to == "wandb":
        from .wandb import WandbSink

        Path(out).mkdir(parents=True, exist_ok=True)
        return WandbSink(active=False, project="specscope", name=run.run_id, config=run.config, dir=str(out),
                         reinit="create_new")
    from .mlflow import MlflowSink

    return MlflowSink(tracking_uri=out, run_name=run.run_id)


def _measurements(run: Any) -> list[tuple[int, str, Any]]:
    """The run's ``(step, probe, Measurement)``, rebuilt from its metrics and spectra tables, in step then probe
    order."""
    from ..store.rows import Measurement

    found: dict[tuple[int, str], Measurement] = {}
    metrics = run.metrics()
    for (step, probe), rows in metrics.groupby(["step", "probe"], sort=False):
        m = found.setdefault((int(step), str(probe)), Measurement())
        m.metrics.extend(rows[["layer", "kind", "name", "part", "metric", "value", "status"]].to_dict("records"))
    spectra = run.spectra()
    for (step, probe), rows in spectra.groupby(["step", "probe"], sort=False):
        m = found.setdefault((int(step), str(probe)), Measurement())
        m.spectra.extend(rows[["layer", "kind", "name", "part", "quantity", "values", "status"]].to_dict("records"))
    return [(s, p, m) for (s, p), m in sorted(found.items())]


def export_run(run_dir: str | os.PathLike, to: str, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Export the run in ``run_dir`` to ``to`` (``"tensorboard"``, ``"wandb"`` or ``"mlflow"``): its metrics (as
    scalars), its stored spectra (as histograms; not to MLflow, which has none) and its training scalars, each at its
    step, under the tags of :mod:`specscope.export.common`.

    ``out``: TensorBoard's log directory; W&B's directory (the run lands in ``<out>/wandb/``; online or offline
    as ``WANDB_MODE`` says); MLflow's tracking URI or a directory for its file store. Default ``<run_dir>/<to>``.
    A new TensorBoard writer / W&B run / MLflow run is opened and closed; the user's active runs are left alone.

    Returns a dict: ``to``, ``out`` (str), ``metrics``, ``histograms`` and ``scalars`` (numbers of values exported).
    A path that is not a run is a :class:`~specscope.errors.RunNotFoundError`, an unknown backend or a missing
    package a :class:`ConfigError`."""
    from ..store.reader import open_run

    if to not in BACKENDS:
        raise ConfigError(f"export: unknown backend {to!r} (one of {', '.join(BACKENDS)})")
    run = open_run(run_dir)
    out = out if out is not None else run.dir / to
    counts = {"metrics": 0, "histograms": 0, "scalars": 0}
    sink = _sink(to, run, out)
    try:
        for step, probe, m in _measurements(run):
            n_scalars, n_hists = sink.write(step, probe, m)
            counts["metrics"] += n_scalars
            counts["histograms"] += n_hists
        scalars = run.scalars(wide=False)
        for step, rows in scalars.groupby("step", sort=True):
            counts["scalars"] += sink.scalars(int(step), dict(zip(rows["name"], rows["value"])))
    finally:
        sink.close()
    return {"to": to, "out": str(out), **counts}
