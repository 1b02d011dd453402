"""What a run has, and what an analysis needs that it lacks (SPEC section 5: every analysis runs on
any model's run; where the run lacks what an analysis needs, the verdict says so).

:func:`contents` reads a run once into a :class:`RunContents`; the analyses ask it for the
sentence that names what is missing (``None`` when nothing is), so every analysis words the
same gap the same way:

- ``weights(n, what)``: "only 2 weight measurements: SoSD onset needs >= 3";
- ``layers_missing(n, what)``: "only 1 layer: a depth profile of alpha_tail needs >= 3";
- ``blocks(what)``: "no transformer blocks in this run: layer importance needs block skipping";
- ``loss_for_knee()``: which loss the knee is taken on (the validation loss; the training loss only
  when too few validation losses were logged), and why not the validation loss;
- ``tokens_note(what)``: "no tokens logged: loss-decrease rate per step";
- ``parts_note()`` / ``depth_note()``: which kinds had several matrices per layer (experts,
  gates) averaged, and what ``layer`` means in a model without transformer blocks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..models import BLOCK_KINDS
from ..store.reader import Run

log = logging.getLogger(__name__)

MIN_KNEE_POINTS = 5  # logged losses a loss knee needs (a smoothed rate, its maximum, and a fall after it)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


#: Names other tools log the same scalars under (HF Trainer, Lightning); the analyses read the first name.
SCALAR_ALIASES = {"val_loss": ("eval_loss", "val/loss", "validation_loss"), "lr": ("learning_rate", "lr-AdamW", "lr-SGD")}


def training_scalars(run: Run) -> pd.DataFrame:
    """The run's wide scalars table (:meth:`Run.scalars`) as the analyses read it: where a scalar the analyses use
    (``val_loss``, ``lr``) was not logged under that name but under another tool's (:data:`SCALAR_ALIASES`:
    HF's ``eval_loss`` and ``learning_rate``...), a column of the analyses' name holds those values. A DataFrame."""
    sc = run.scalars()
    for name, others in SCALAR_ALIASES.items():
        if name not in sc:
            found = next((o for o in others if o in sc), None)
            if found is not None:
                sc[name] = sc[found]
    return sc


@dataclass(frozen=True)
class RunContents:
    """A run's inventory: ``weight_steps`` (weight-probe measurements), ``layers`` and ``kinds`` of the hidden
    matrices (layer >= 0), ``outside_kinds`` (kinds only outside the blocks, layer < 0), ``has_blocks``, ``parts``
    (most matrices of one kind in one layer), ``loss_points`` and ``val_loss_points`` (logged values), ``has_tokens``,
    ``has_lr`` and ``trajectory_windows`` (measured global trajectory windows). Its methods return the sentence
    naming what an analysis lacks, or None."""

    weight_steps: int = 0
    layers: tuple[int, ...] = ()
    kinds: tuple[str, ...] = ()
    outside_kinds: tuple[str, ...] = ()
    has_blocks: bool = False
    parts: dict[str, int] = field(default_factory=dict)
    loss_points: int = 0
    val_loss_points: int = 0
    has_tokens: bool = False
    has_lr: bool = False
    trajectory_windows: int = 0

    def weights(self, n: int, what: str) -> str | None:
        """Why ``what`` cannot run for want of ``n`` weight-probe measurements, or None."""
        if self.weight_steps == 0:
            return f"no weight-probe measurements in this run: {what} needs the Weights probe"
        if self.weight_steps < n:
            return f"only {_plural(self.weight_steps, 'weight measurement')}: {what} needs >= {n}"
        return None

    def hidden(self, what: str) -> str | None:
        """Why ``what`` cannot run when the weight probe measured no hidden matrix (layer >= 0), or None."""
        if self.weight_steps == 0 or self.layers:
            return None
        only = f", only {', '.join(self.outside_kinds)}" if self.outside_kinds else ""
        return f"no hidden matrices (layer >= 0) in this run{only}: {what} needs them"

    def layers_missing(self, n: int, what: str, have: int | None = None, detail: str = "") -> str | None:
        """Why ``what`` cannot run for want of ``n`` layers (``have``: layers usable, default all), or None."""
        have = len(self.layers) if have is None else have
        if have >= n:
            return None
        return f"only {_plural(have, 'layer')}{detail}: {what} needs >= {n}"

    def blocks(self, what: str) -> str | None:
        """Why ``what`` cannot run on a model without transformer blocks, or None."""
        return None if self.has_blocks else f"no transformer blocks in this run: {what}"

    def loss_for_knee(self) -> tuple[str | None, str | None]:
        """``(scalar, note)``: the loss the knee is taken on, ``"val_loss"`` or ``"loss"`` (None: neither has
        :data:`MIN_KNEE_POINTS` values), and the sentence saying why not the validation loss (None when it is).

        SPEC 5.1: the knee is taken on the validation loss; on the training loss only when the run logged
        too few validation losses for a knee, and then said so.
        """
        if self.val_loss_points >= MIN_KNEE_POINTS:
            return "val_loss", None
        why = ("no validation loss logged" if self.val_loss_points == 0 else
               f"only {_plural(self.val_loss_points, 'validation-loss value')} logged (a knee needs >= {MIN_KNEE_POINTS})")
        if self.loss_points >= MIN_KNEE_POINTS:
            return "loss", f"{why}: loss knee on the training loss"
        return None, f"{why} and {'no' if self.loss_points == 0 else 'too few'} training losses: no loss knee"

    def tokens_note(self, what: str) -> str | None:
        """Why ``what`` is per step rather than per token, or None."""
        return None if self.has_tokens else f"no tokens logged: {what} per step"

    def parts_note(self, kinds: set[str] | None = None) -> str | None:
        """Kinds (of ``kinds``) with several matrices in one layer, averaged per layer; or None."""
        multi = {k: n for k, n in sorted(self.parts.items()) if n > 1 and (kinds is None or k in kinds)}
        if not multi:
            return None
        listed = ", ".join(f"{k} ({n} parts)" for k, n in multi.items())
        return f"parts of one layer (experts, gates) averaged per layer: {listed}"

    def depth_note(self) -> str | None:
        """For a model without blocks: layers are the matrices' order of appearance in depth."""
        if self.has_blocks or not self.layers:
            return None
        span = (f"layers {self.layers[0]}..{self.layers[-1]} are the weight layers" if len(self.layers) > 1
                else f"layer {self.layers[0]} is the only weight layer")
        return f"no transformer blocks: {span} in order of depth (kinds {', '.join(self.kinds)})"


def contents(run: Run) -> RunContents:
    """The inventory of ``run`` (weight probe, scalars, global trajectory windows), read once: a
    :class:`RunContents`."""
    m = run.metrics(probe="weights")
    hidden = m[m["layer"] >= 0]
    parts = (hidden.groupby(["layer", "kind"])["name"].nunique().groupby(level="kind").max().astype(int).to_dict()
             if not hidden.empty else {})
    sc = training_scalars(run)

    def points(col: str) -> int:
        return int(pd.to_numeric(sc[col], errors="coerce").notna().sum()) if col in sc else 0

    traj = run.metrics(probe="trajectory", metric="gap_ratio")
    traj = traj[(traj["name"] == "global") & traj["value"].notna()]
    kinds = [k for k in dict.fromkeys(hidden.sort_values(["layer", "kind"])["kind"])]
    outside = sorted(set(m.loc[m["layer"] < 0, "kind"]))
    return RunContents(weight_steps=int(m["step"].nunique()), layers=tuple(int(x) for x in sorted(hidden["layer"].unique())),
                       kinds=tuple(kinds), outside_kinds=tuple(outside),
                       has_blocks=bool(hidden["kind"].isin(BLOCK_KINDS).any()), parts=parts,
                       loss_points=points("loss"), val_loss_points=points("val_loss"),
                       has_tokens="tokens" in sc and bool(np.isfinite(pd.to_numeric(sc["tokens"], errors="coerce")).any()),
                       has_lr=points("lr_hidden") > 0 or points("lr") > 0, trajectory_windows=int(traj["step"].nunique()))


def nan_reasons(metrics: pd.DataFrame, metric: str) -> str:
    """Where ``metric`` is NaN at the last step: ``layer 1 (other): no tail window fits ...``; '' when it never is."""
    m = metrics[(metrics["metric"] == metric)]
    if m.empty:
        return ""
    m = m[(m["step"] == m["step"].max()) & m["value"].isna()]
    out = []
    for (layer, kind, status), _ in m.groupby(["layer", "kind", "status"], sort=True):
        out.append(f"layer {layer} ({kind}): {status}")
    return "; ".join(out)


def join(*parts: str | None) -> str:
    """The non-empty sentences joined with ``"; "``: one string, ``""`` when all are empty or None."""
    return "; ".join(p for p in parts if p)
