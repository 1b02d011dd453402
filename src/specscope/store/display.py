"""A run as a notebook shows it (``Run._repr_html_``): what it measured, how far it got, its latest numbers, and
small inline SVG curves, with no plotting library.

The summary names the run and whether it is still being written, lists its probes (schedule, rows
measured), the last step and tokens, the latest value of each training scalar beside a sparkline
of it over the steps, and for each probe and kind of matrix the median over layers of its headline
metrics at the last measured step, each beside a sparkline of that median over the steps.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pandas as pd

from ..numbers import sig

if TYPE_CHECKING:
    from .reader import Run

HEADLINE = ("stable_rank", "alpha_tail", "entropy_norm", "rankme", "kstar", "spectral_norm")
SKIPPED_SCALARS = ("probe_seconds/", "probe_failed/")


def sparkline(values: Iterable[float], width: int = 120, height: int = 24) -> str:
    """An inline SVG polyline of ``values`` in their order (NaN skipped), scaled to ``width`` x ``height`` pixels;
    an empty string for fewer than two finite values."""
    ys = np.asarray([v for v in values], dtype=float)
    xs = np.arange(len(ys), dtype=float)
    ok = np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if len(ys) < 2:
        return ""
    lo, hi = float(ys.min()), float(ys.max())
    span = hi - lo if hi > lo else 1.0
    px = 2 + (xs - xs[0]) / max(xs[-1] - xs[0], 1.0) * (width - 4)
    py = height - 2 - (ys - lo) / span * (height - 4)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py))
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/></svg>')


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells are already escaped HTML."""
    th = "".join(f"<th style='text-align:left'>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def scalar_summary(scalars: pd.DataFrame) -> list[tuple[str, float, int, pd.Series]]:
    """Per training scalar (wide table of :meth:`Run.scalars`; probe timings and failure counts left out): its name,
    latest value, the step of it and the series over the steps."""
    rows = []
    for name in [c for c in scalars.columns if c not in ("step", "tokens")]:
        if name.startswith(SKIPPED_SCALARS):
            continue
        s = scalars[["step", name]].dropna()
        if not s.empty:
            rows.append((name, float(s[name].iloc[-1]), int(s["step"].iloc[-1]), s[name].reset_index(drop=True)))
    return rows


def metric_summary(metrics: pd.DataFrame) -> list[tuple[str, str, str, float, int, pd.Series]]:
    """Per probe, kind and headline metric (:data:`HEADLINE`): probe, kind, metric, the median over layers at the
    last measured step, the number of layers, and that median over the steps."""
    rows = []
    head = metrics[metrics["metric"].isin(HEADLINE)] if len(metrics) else metrics
    for (probe, kind, metric), g in head.groupby(["probe", "kind", "metric"], sort=True):
        med = g.groupby("step")["value"].median()
        rows.append((probe, kind, metric, float(med.iloc[-1]), int(g["layer"].nunique()), med.reset_index(drop=True)))
    return rows


def run_html(run: "Run") -> str:
    """The notebook summary of ``run`` as one HTML string (see the module docstring); a run with no rows yet says
    so."""
    meta = run.meta
    state = "finished" if meta.get("closed") else "being written (or stopped before closing)"
    parts = [f"<div><b>specscope run</b> <code>{html.escape(str(run.run_id))}</code> — {state}<br>"
             f"<small>{html.escape(str(run.dir))}</small></div>"]
    metrics, scalars = run.metrics(), run.scalars()
    probes = meta.get("probes") or []
    if probes:
        counts = metrics.groupby("probe").size() if len(metrics) else pd.Series(dtype=int)
        steps = metrics.groupby("probe")["step"].nunique() if len(metrics) else pd.Series(dtype=int)
        rows = [[html.escape(str(p.get("name"))), html.escape(str(p.get("type"))), html.escape(str(p.get("schedule"))),
                 sig(int(steps.get(p.get("name"), 0))), sig(int(counts.get(p.get("name"), 0)))] for p in probes]
        parts.append(_table(["probe", "type", "schedule", "steps measured", "values"], rows))
    last_step = max([int(df["step"].max()) for df in (metrics, scalars) if len(df)] or [-1])
    if last_step < 0:
        parts.append("<p>No rows yet.</p>")
        return "\n".join(parts)
    tokens = scalars["tokens"].dropna() if "tokens" in scalars else pd.Series(dtype=float)
    bad = int((metrics["status"] != "ok").sum()) if len(metrics) else 0
    parts.append(f"<p>last step {sig(last_step)}" + (f", {sig(tokens.iloc[-1])} tokens" if len(tokens) else "")
                 + f"; {sig(len(metrics))} metric values, {sig(bad)} NaN with a status</p>")
    srows = [[html.escape(n), sig(v), sig(st), sparkline(series)] for n, v, st, series in scalar_summary(scalars)]
    if srows:
        parts.append(_table(["scalar", "latest", "at step", "over steps"], srows))
    mrows = [[html.escape(p), html.escape(k), html.escape(m), sig(v), sig(n), sparkline(series)]
             for p, k, m, v, n, series in metric_summary(metrics)]
    if mrows:
        parts.append(_table(["probe", "kind", "metric", "median over layers, last step", "layers", "over steps"],
                            mrows))
    return "\n".join(parts)
