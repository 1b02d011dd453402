"""The ``export`` command: a stored run's numbers into TensorBoard, W&B or MLflow."""
from __future__ import annotations

import argparse
import re

from ..export.common import BACKENDS
from . import args as A


def destination(text: str) -> str:
    """``--out``: a URI (``sqlite:///...``, ``http://...``: MLflow) as it is, else a directory to write into (absent or
    an existing directory); the text unchanged."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+:", text):
        return text
    return A.out_dir(text)


def cmd_export(a: argparse.Namespace) -> int:
    """``specscope export RUN --to BACKEND``: export the run's metrics, spectra (histograms) and training scalars
    and say where they went. Returns the exit code, 0."""
    from ..export import export_run

    got = export_run(a.run, a.to, a.out)
    print(f"exported {got['metrics']} metric values, {got['histograms']} spectra and {got['scalars']} scalars of "
          f"{a.run} to {got['to']}: {got['out']}")
    return 0


def register(sub) -> None:
    """Add the ``export`` subcommand to the ``specscope`` parser's subparsers ``sub``."""
    p = sub.add_parser("export", help="export a stored run to TensorBoard, W&B or MLflow",
                       description="Export a run's metrics (scalars), stored spectra (histograms; not to MLflow) and "
                                   "training scalars, each at its step, under specscope/<probe>/<kind>/<metric>/"
                                   "layer_<l> tags.")
    p.add_argument("run", type=A.existing_path, help="run directory")
    p.add_argument("--to", choices=BACKENDS, required=True, help="backend")
    p.add_argument("--out", type=destination, default=None,
                   help="TensorBoard log directory, W&B directory (WANDB_MODE decides online or offline), or MLflow "
                        "tracking URI or directory; None: RUN/<backend>")
    p.set_defaults(func=cmd_export)
