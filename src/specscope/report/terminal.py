"""Terminal summary of a run."""
from __future__ import annotations

import math

import pandas as pd

from ..store.reader import Run
from .format import fmt

SUMMARY_METRICS = ("stable_rank", "alpha_tail", "alpha_head", "entropy_norm", "spectral_norm")


def kind_table(metrics: pd.DataFrame, probe: str = "weights") -> pd.DataFrame:
    """Per kind of hidden matrix (layer >= 0) of ``probe``: a DataFrame of display strings with columns ``kind``,
    ``layers`` (count), one column per ``SUMMARY_METRICS`` (``"first → last"``, means over layers at the first and
    last measured step) and ``compression`` (``1 - sr_last / sr_first`` of the stable rank, as a percentage); empty
    when nothing was measured."""
    df = metrics[(metrics["probe"] == probe) & (metrics["layer"] >= 0) & metrics["metric"].isin(SUMMARY_METRICS)]
    if df.empty:
        return pd.DataFrame()
    first, last = df["step"].min(), df["step"].max()
    rows = []
    for kind, g in df.groupby("kind", sort=False):
        row = {"kind": kind, "layers": g["layer"].nunique()}
        for m in SUMMARY_METRICS:
            a = g[(g["metric"] == m) & (g["step"] == first)]["value"].mean()
            b = g[(g["metric"] == m) & (g["step"] == last)]["value"].mean()
            row[m] = f"{fmt(a, digits=3)} → {fmt(b, digits=3)}"
        sr0 = g[(g["metric"] == "stable_rank") & (g["step"] == first)]["value"].mean()
        sr1 = g[(g["metric"] == "stable_rank") & (g["step"] == last)]["value"].mean()
        row["compression"] = f"{1 - sr1 / sr0:+.1%}" if sr0 and math.isfinite(sr0) else "nan"
        rows.append(row)
    return pd.DataFrame(rows)


def summary(run: Run) -> str:
    """A few lines of plain text about ``run`` for a terminal: its steps, tokens, final losses and throughput
    (tokens/s), how many measurements and NaN values it holds, :func:`kind_table`, and the first → last ``rankme``
    and ``alpha_tail`` of its activation and gradient spectra. One string, no trailing newline."""
    meta = run.meta
    lines = [f"run {run.run_id}  ({run.dir})"]
    s = meta.get("summary") or {}
    if s:
        lines.append(f"  {fmt(s.get('steps'), 'steps')}, {fmt(s.get('tokens'), 'tokens')}, final train loss "
                     f"{fmt(s.get('final_loss'))}, val loss {fmt(s.get('final_val_loss'))}, {fmt(s.get('tokens_per_s'), 'tokens/s')}")
    else:
        sc = run.scalars()
        loss = sc["loss"].dropna() if "loss" in sc else pd.Series(dtype=float)
        if len(loss):
            lines.append(f"  last step {int(sc['step'].max())}, last loss {fmt(loss.iloc[-1])}")
    metrics = run.metrics()
    if metrics.empty:
        lines.append("  (no probe measurements yet)")
        return "\n".join(lines)
    bad = metrics[metrics["status"] != "ok"]
    steps = sorted(metrics["step"].unique())
    lines.append(f"  {len(steps)} measurements (steps {steps[0]}..{steps[-1]}), {len(metrics):,} values, "
                 f"{len(bad):,} NaN with a status")
    table = kind_table(metrics)
    if not table.empty:
        lines.append("  weight spectra per kind, mean over layers (first → last measurement):")
        lines.extend("    " + ln for ln in table.to_string(index=False).splitlines())
    lens = metrics[metrics["probe"].isin(["activations", "gradients"]) & metrics["metric"].isin(["rankme", "alpha_tail"])]
    for (probe, layer, kind), g in lens.groupby(["probe", "layer", "kind"]):
        first, last = g["step"].min(), g["step"].max()
        vals = {m: (g[(g["metric"] == m) & (g["step"] == first)]["value"].mean(), g[(g["metric"] == m) & (g["step"] == last)]["value"].mean())
                for m in ("rankme", "alpha_tail")}
        what = f"{probe} of block {layer}" + ("" if probe == "activations" else f" ({kind})")
        lines.append(f"  {what}: rankme {fmt(vals['rankme'][0], digits=3)} → {fmt(vals['rankme'][1], digits=3)}, "
                     f"alpha_tail {fmt(vals['alpha_tail'][0], digits=3)} → {fmt(vals['alpha_tail'][1], digits=3)} "
                     f"(steps {first} → {last})")
    return "\n".join(lines)
