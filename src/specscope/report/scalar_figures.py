"""Every training scalar of one or several runs, under any name (specscope's, Hugging Face's ``loss`` /
``eval_loss`` / ``learning_rate`` / ``grad_norm`` / ``epoch``...), grouped into panels: losses together, the learning
rate on its own, probe times together; x = tokens when logged, else steps."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .figures import _grid, smooth
from .format import fmt, unit_of

#: panel order of the known groups; any other scalar gets a panel of its own after them
GROUPS = ("loss", "learning rate", "gradient norm", "accuracy", "epoch", "throughput", "probe time", "runtime")
MAX_PANELS = 12
_VALIDATION = ("val", "eval", "test", "valid")


def group_of(name: str) -> str:
    """The panel a scalar named ``name`` is drawn in: one of :data:`GROUPS`, else ``name`` itself. A str."""
    n = name.lower()
    leaf = n.rsplit("/", 1)[-1]
    if n.startswith("probe_seconds"):
        return "probe time"
    if leaf in ("lr", "learning_rate") or leaf.startswith(("lr_", "learning_rate")) or leaf.endswith("_lr"):
        return "learning rate"
    if "loss" in leaf:
        return "loss"
    if "grad_norm" in leaf:
        return "gradient norm"
    if leaf in ("epoch", "epochs"):
        return "epoch"
    if leaf.endswith(("_per_s", "per_second")):
        return "throughput"
    if leaf.endswith("_runtime"):
        return "runtime"
    if "acc" in leaf:
        return "accuracy"
    return name


def is_validation(name: str) -> bool:
    """True when ``name`` is a held-out quantity (``val_loss``, ``eval_loss``, ``test_acc``...): drawn with markers,
    not smoothed."""
    return name.lower().split("/")[-1].split("_")[0] in _VALIDATION


def scalar_names(scalars: pd.DataFrame) -> list[str]:
    """The scalar columns of a wide scalars frame (not ``step`` / ``tokens``) that hold a finite value: a list."""
    out = []
    for c in scalars.columns:
        if c in ("step", "tokens"):
            continue
        if np.isfinite(pd.to_numeric(scalars[c], errors="coerce").to_numpy(dtype=float)).any():
            out.append(c)
    return out


def panels(names: list[str]) -> list[tuple[str, list[str]]]:
    """``(group, names)`` per panel: the known groups in :data:`GROUPS` order, then one panel per other scalar by
    name (at most :data:`MAX_PANELS` panels in all). A list."""
    by: dict[str, list[str]] = {}
    for n in sorted(names):
        by.setdefault(group_of(n), []).append(n)
    order = [g for g in GROUPS if g in by] + sorted(g for g in by if g not in GROUPS)
    return [(g, by[g]) for g in order[:MAX_PANELS]]


def _xcol(frames: Mapping[str, pd.DataFrame], names: list[str]) -> str:
    """``tokens`` when every point of ``names`` in every frame has a finite token count, else ``step``."""
    for sc in frames.values():
        if "tokens" not in sc:
            return "step"
        tok = pd.to_numeric(sc["tokens"], errors="coerce")
        for n in names:
            if n in sc and tok[pd.to_numeric(sc[n], errors="coerce").notna()].isna().any():
                return "step"
    return "tokens"


def scalar_figure(frames: Mapping[str, pd.DataFrame]) -> Figure | None:
    """Every scalar of the runs in ``frames`` (run name → wide scalars frame, :meth:`~specscope.Run.scalars`), one
    panel per group (:func:`panels`): with one run a colour per scalar, with several a colour per run and a line
    style per scalar. Training losses are drawn raw (grey) and smoothed when long. A Figure; None when no run holds
    a finite scalar."""
    names = sorted({n for sc in frames.values() for n in scalar_names(sc)})
    groups = panels(names)
    if not groups:
        return None
    fig, axes = _grid(len(groups), width=4.6, height=3.1, ncols=3)
    several = len(frames) > 1
    styles = ["-", "--", ":", "-."]
    for ax, (group, members) in zip(axes, groups):
        xcol = _xcol(frames, members)
        for r, (run, sc) in enumerate(frames.items()):
            for j, name in enumerate(members):
                if name not in sc:
                    continue
                d = sc[[xcol, name]].apply(pd.to_numeric, errors="coerce").dropna().sort_values(xcol)
                if d.empty:
                    continue
                x, y = d[xcol].to_numpy(float), d[name].to_numpy(float)
                color = f"C{r % 10}" if several else f"C{j % 10}"
                ls = styles[j % len(styles)] if several else "-"
                label = f"{run} · {name}" if several else name
                if is_validation(name) or len(y) < 3:
                    ax.plot(x, y, ls, marker="o", ms=3, color=color, label=label)
                elif group == "loss" and len(y) > 20:
                    if not several:
                        ax.plot(x, y, color="0.8", lw=0.7)
                    ax.plot(x, smooth(y), ls, color=color, lw=1.5, label=label + " (smoothed)")
                else:
                    ax.plot(x, y, ls, color=color, lw=1.2, label=label)
        unit = unit_of(members[0]) if len(members) == 1 or group == "probe time" else None
        ax.set_title(group, fontsize=10)
        ax.set_xlabel(xcol)
        if unit:
            ax.set_ylabel(unit)
        if group == "probe time":
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
    return fig


def latest_scalars(scalars: pd.DataFrame) -> pd.DataFrame:
    """Per scalar with a finite value: ``scalar``, ``group``, the ``step`` of its last value, ``last``, ``min``,
    ``max`` (display text with the scalar's unit) and ``points`` (values logged). A DataFrame, empty without
    scalars."""
    rows = []
    for name in scalar_names(scalars):
        d = scalars[["step", name]].assign(v=pd.to_numeric(scalars[name], errors="coerce")).dropna(subset=["v"])
        unit = unit_of(name)
        rows.append({"scalar": name, "group": group_of(name), "step": int(d["step"].iloc[-1]),
                     "last": fmt(d["v"].iloc[-1], unit), "min": fmt(d["v"].min(), unit), "max": fmt(d["v"].max(), unit),
                     "points": len(d)})
    return pd.DataFrame(rows)
