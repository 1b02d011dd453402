"""One HTML report overlaying several runs of any model (``specscope report RUN1 RUN2 ...``): their scalars (loss
curves first), the main weight metrics over steps per kind, and their latest values side by side."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..store.reader import Run
from .format import fmt, table_html, unit_of
from .page import Page, write_html
from .probe_figures import OVERLAY_METRICS, overlay_metrics
from .scalar_figures import scalar_figure, scalar_names


def run_names(runs: Sequence[Run]) -> list[str]:
    """A distinct display name per run: its run id, suffixed ``#2``, ``#3``... where ids repeat. A list of str."""
    seen: dict[str, int] = {}
    out = []
    for r in runs:
        seen[r.run_id] = seen.get(r.run_id, 0) + 1
        out.append(r.run_id if seen[r.run_id] == 1 else f"{r.run_id}#{seen[r.run_id]}")
    return out


def side_by_side(runs: Sequence[Run], names: Sequence[str]) -> pd.DataFrame:
    """Latest values of the runs side by side: one row per quantity (last step, the last value of each scalar, and the
    mean over hidden matrices of each :data:`OVERLAY_METRICS` weight metric per kind at the last measurement), one
    column of display text per run (``–`` where a run lacks it). A DataFrame."""
    table: dict[str, dict[str, str]] = {}
    for run, name in zip(runs, names):
        sc = run.scalars()
        col = table.setdefault(name, {})
        if not sc.empty:
            col["last step"] = fmt(sc["step"].max(), "steps")
            if "tokens" in sc and pd.to_numeric(sc["tokens"], errors="coerce").notna().any():
                col["tokens"] = fmt(pd.to_numeric(sc["tokens"], errors="coerce").max(), "tokens")
        for s in scalar_names(sc):
            v = pd.to_numeric(sc[s], errors="coerce").dropna()
            col[s] = fmt(v.iloc[-1], unit_of(s))
        m = run.metrics(probe="weights")
        m = m[(m["layer"] >= 0) & m["metric"].isin(OVERLAY_METRICS)]
        if not m.empty:
            last = m[m["step"] == m["step"].max()]
            for (metric, kind), g in last.groupby(["metric", "kind"], sort=True):
                col[f"{metric} · {kind} (mean over layers)"] = fmt(g["value"].mean())
    df = pd.DataFrame(table)
    df.index.name = "quantity"
    return df.fillna("–").reset_index()


def render_overlay(runs: Sequence[Run], figures_dir: Path | None = None, figures_format: str | None = None) -> str:
    """The report overlaying ``runs`` as one self-contained HTML document (a str, figures inline as SVG; with
    ``figures_format`` each figure also written into ``figures_dir``): scalars, weight metrics per kind, latest values
    side by side; a section without data in any run says so."""
    names = run_names(runs)
    page = Page(f"{len(runs)} runs · " + " vs ".join(names), figures_dir, figures_format)
    page.add("<table class=facts>" + "".join(
        f"<tr><th>{html.escape(n)}</th><td><code>{html.escape(str(r.dir))}</code></td></tr>" for n, r in zip(names, runs))
        + "</table>")
    scalars = {n: r.scalars() for n, r in zip(names, runs)}
    page.section("Loss and training scalars", lambda: scalar_figure(scalars),
                 "One colour per run, one line style per scalar; x = tokens where every run logged them, else steps.",
                 "no run logged a scalar")
    metrics = {n: r.metrics(probe="weights") for n, r in zip(names, runs)}
    page.section("Weight metrics over steps per kind", lambda: overlay_metrics(metrics),
                 "Mean over the hidden matrices (layer ≥ 0) of each kind at each measurement; one colour per run.",
                 "no run has a finite weight metric (" + ", ".join(OVERLAY_METRICS) + ") of a hidden matrix")
    page.heading("Latest values side by side", table_html(side_by_side(runs, names)))
    return page.html()


def write_overlay(runs: Sequence[Run], out: str | os.PathLike, figures: str | None = None) -> Path:
    """Write :func:`render_overlay` of ``runs`` to ``out`` (atomically, parent directories created; with ``figures``
    (png, pdf, svg) each figure also as a file in ``<stem>_figures/`` beside it). Returns the written path."""
    return write_html(out, lambda d: render_overlay(runs, d, figures))
