"""``ss.findings(run)``: the SPEC section 5 analyses that a run's data allows, each a table and a verdict."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..store.artifacts import jsonable, load_artifact
from ..store.reader import Run, open_run
from .edge import edge_analysis
from .lifecycle import compression_waves, depth_profiles
from .sosd import sosd

log = logging.getLogger(__name__)


@dataclass
class Finding:
    name: str
    title: str
    verdict: dict[str, Any]
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def _weights_steps(run: Run) -> int:
    m = run.metrics(probe="weights", metric="stable_rank")
    return int(m["step"].nunique()) if not m.empty else 0


def findings(run: Run | str | os.PathLike, metric: str = "alpha_tail") -> list[Finding]:
    """Every analysis the run supports: SoSD and the lifecycle (weight probe, >= 3 measurements), the
    depth profile (weight probe), the spectral edge (trajectory probe), and pruning when
    ``specscope prune RUN`` has saved its results beside the run."""
    run = run if isinstance(run, Run) else open_run(run)
    out: list[Finding] = []
    n = _weights_steps(run)
    if n >= 3:
        table, verdict = sosd(run)
        out.append(Finding("sosd", "Stability of the singular distribution (SoSD onset vs loss knee)", verdict, table))
        table, verdict = compression_waves(run)
        out.append(Finding("compression_waves", "Compression waves across depth", verdict, table))
    if n >= 1:
        table, verdict = depth_profiles(run, metric)
        out.append(Finding("depth_profile", f"Depth profile of {metric}", verdict, table))
    if not run.metrics(probe="trajectory").empty:
        table, events, verdict = edge_analysis(run)
        out.append(Finding("spectral_edge", "Trajectory gap dynamics (spectral edge)", verdict, table))
    saved = load_artifact(run.dir, "pruning")
    if saved is not None:  # written by `specscope prune RUN` (it needs the live model)
        tables, verdict = saved
        out.append(Finding("pruning", "Layer importance and pruning (spectral rule vs Last-N vs random)", verdict,
                           tables.get("summary", pd.DataFrame())))
    return out


def to_json(items: list[Finding], with_tables: bool = True) -> str:
    doc = []
    for f in items:
        d = {"name": f.name, "title": f.title, "verdict": jsonable(f.verdict)}
        if with_tables and not f.table.empty:
            d["table"] = json.loads(f.table.to_json(orient="records"))
        doc.append(d)
    return json.dumps(doc, indent=1)


def to_text(items: list[Finding], max_rows: int = 20) -> str:
    if not items:
        return "no findings: the run has no weight or trajectory measurements"
    lines = []
    for f in items:
        lines.append(f"== {f.title}")
        lines.append(f"   {f.verdict.get('verdict', '')}")
        extra = {k: v for k, v in jsonable(f.verdict).items() if k != "verdict"}
        if extra:
            lines.append("   " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()))
        if not f.table.empty:
            with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
                lines.append(f.table.head(max_rows).to_string(index=False))
            if len(f.table) > max_rows:
                lines.append(f"   ... {len(f.table) - max_rows} more rows (--json for all)")
        lines.append("")
    return "\n".join(lines)
