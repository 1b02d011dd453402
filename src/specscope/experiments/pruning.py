"""Layer importance and spectral pruning on a live model (SPEC 5.4; ``specscope prune``).

Skipping a block makes it the identity (its output is its input hidden states), through a
forward hook, so it works unchanged on the reference GPT and on HF GPT-2 / NeoX / LLaMA-family
blocks, whatever they return. The rules and the verdicts live in :mod:`specscope.analysis.pruning`.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterable, Iterator

import pandas as pd
import torch
from torch import nn

from ..analysis.lifecycle import SV_ALPHA, final_sv_alpha
from ..analysis.pruning import block_alpha, importance_verdict, pruning_verdict, rule_choice
from ..errors import UnsupportedModelError
from ..measure import _batches, _device, find_blocks, sequence_losses
from ..models.modes import kept_modes

log = logging.getLogger(__name__)
RANDOM_DRAWS = 20  # random prunings averaged (SPEC 5.4: >= 20)


def _identity_hook(_mod, args, kwargs, out):
    h = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
    if isinstance(out, tuple):
        return (h,) + tuple(out[1:])
    return h


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, a list of modules in depth order; :class:`UnsupportedModelError` (one line)
    when it has none to skip."""
    try:
        return find_blocks(model)
    except ValueError:
        raise UnsupportedModelError(f"no transformer blocks in this model ({type(model).__name__}): layer importance needs "
                                    "block skipping (a ModuleList named blocks / h / layers)") from None


@contextlib.contextmanager
def skipped(model: nn.Module, layers: Iterable[int]) -> Iterator[None]:
    """A context manager inside which blocks ``layers`` (indices) act as the identity (each returns its input
    hidden states); the hooks are removed on exit. Yields None."""
    blocks = blocks_of(model)
    handles = [blocks[i].register_forward_hook(_identity_hook, with_kwargs=True) for i in sorted(set(layers))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def heldout_loss(model: nn.Module, sequences: torch.Tensor, batch: int = 8) -> float:
    """Mean next-token cross-entropy (nats per token, averaged per sequence, then over sequences) over ``sequences``
    (N, T) of token ids, in batches of ``batch``, the model in eval mode (its modes restored): a float."""
    total, n = 0.0, 0
    with kept_modes(model, eval=True):
        for x in _batches(sequences, batch, _device(model)):
            losses = sequence_losses(model, x)
            total += float(losses.sum())
            n += len(losses)
    return total / max(1, n)


def block_importance(model: nn.Module, sequences: torch.Tensor, batch: int = 8) -> pd.DataFrame:
    """One row per block: a DataFrame with columns ``layer``, ``loss`` (held-out loss with that block skipped, nats
    per token), ``delta_loss`` (its increase over the full model) and ``base_loss`` (the full model's)."""
    base = heldout_loss(model, sequences, batch)
    rows = []
    for i in range(len(blocks_of(model))):
        with skipped(model, [i]):
            loss = heldout_loss(model, sequences, batch)
        rows.append({"layer": i, "loss": loss, "delta_loss": loss - base})
    return pd.DataFrame(rows).assign(base_loss=base)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def compare_rules(model: nn.Module, sequences: torch.Tensor, alpha: pd.Series, ks: Iterable[int], metric: str = "alpha_tail",
                  random_seeds: int = RANDOM_DRAWS, batch: int = 8, keep_first: bool = True) -> pd.DataFrame:
    """Delta-perplexity of removing k blocks by the spectral rule, Last-N, and random choice (``random_seeds``
    draws from the spectral rule's candidates), for each ``k`` in ``ks`` with ``0 < k < blocks`` (a rule with fewer
    than ``k`` blocks to remove is left out at that ``k``): a DataFrame with columns ``k``, ``rule``, ``seed``,
    ``layers`` (list of removed indices), ``loss`` (nats per token) and ``delta_ppl`` (perplexity increase over the
    full model)."""
    n = len(blocks_of(model))
    base = heldout_loss(model, sequences, batch)
    rows = []
    for k in ks:
        if not 0 < k < n:
            continue
        plans = [("spectral", 0), ("last_n", 0)] + [("random", s) for s in range(random_seeds)]
        for rule, seed in plans:
            layers = rule_choice(rule, n, k, alpha, metric, seed, keep_first)
            if len(layers) < k:
                continue
            with skipped(model, layers):
                loss = heldout_loss(model, sequences, batch)
            rows.append({"k": k, "rule": rule, "seed": seed, "layers": layers, "loss": loss,
                         "delta_ppl": _ppl(loss) - _ppl(base)})
    return pd.DataFrame(rows)


def model_alpha(model: nn.Module, metric: str = "alpha_tail") -> pd.Series:
    """Each block's ``metric`` (mean over its matrices) measured on the model's weights now: a float Series indexed
    by layer. :data:`~specscope.analysis.lifecycle.SV_ALPHA` is fit to the singular values
    (:func:`~specscope.analysis.lifecycle.sv_decay_alpha`); the other metrics are SPEC section 3's."""
    from ..offline import analyze, analyze_into

    if metric != SV_ALPHA:
        return block_alpha(analyze(model, progress=False), metric)
    import tempfile

    from ..store.reader import open_run

    with tempfile.TemporaryDirectory() as tmp:
        analyze_into(model, tmp, progress=False)
        table = final_sv_alpha(open_run(tmp))
    return block_alpha(table.rename(columns={"value": metric}), metric)


def pruning_study(model: nn.Module, sequences: torch.Tensor, ks: Iterable[int] | None = None, metric: str = "alpha_tail",
                  random_seeds: int = RANDOM_DRAWS, batch: int = 8, keep_first: bool = True,
                  alpha: pd.Series | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(importance, comparison, verdict)``: :func:`block_importance` with each block's ``metric`` (``alpha``, a
    Series indexed by layer, or measured on the weights by :func:`model_alpha`) joined on, :func:`compare_rules`
    for ``ks`` (default ``1..max(2, blocks // 2)``), and a dict with the keys of
    :func:`~specscope.analysis.pruning.importance_verdict` (Spearman rho over all and over the core blocks, the
    rule's direction and whether this model's importance agrees with it) and
    :func:`~specscope.analysis.pruning.pruning_verdict`, ``metric``, ``most_important_layer`` and ``verdict`` (the
    sentence). :class:`UnsupportedModelError` for a model without blocks."""
    blocks_of(model)  # fails first, in one line, on a model without blocks
    alpha = model_alpha(model, metric) if alpha is None else alpha
    importance = block_importance(model, sequences, batch).merge(alpha.rename(metric).rename_axis("layer").reset_index(),
                                                                   on="layer", how="left")
    n = len(importance)
    ks = list(ks) if ks is not None else list(range(1, max(2, n // 2) + 1))
    comparison = compare_rules(model, sequences, alpha, ks, metric, random_seeds, batch, keep_first)
    verdict = {**importance_verdict(importance, metric), **pruning_verdict(comparison), "metric": metric,
               "most_important_layer": int(importance.loc[importance["delta_loss"].idxmax(), "layer"])}
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    verdict["verdict"] = (f"{verdict['direction']}; Spearman rho(importance, {metric}) = {fmt(verdict['rho'])} over all "
                          f"blocks, {fmt(verdict['rho_core'])} (p = {fmt(verdict['p_core'])}) over the {verdict['n_core']} "
                          f"core blocks: this model {_check_text(verdict['direction_check'])}; " + verdict.get("verdict", ""))
    return importance, comparison, verdict


def _check_text(check: str) -> str:
    return {"agrees": "agrees with the rule's direction", "disagrees": "disagrees with the rule's direction"}.get(
        check, "neither agrees nor disagrees significantly with the rule's direction")


def summarize_comparison(comparison: pd.DataFrame) -> pd.DataFrame:
    """Mean delta-perplexity per (k, rule), with the layers removed (random: the spread over seeds): a DataFrame with
    columns ``k``, ``rule``, ``layers`` (comma-separated, ``(random)`` for the random rule), ``delta_ppl`` (mean),
    ``std`` (over seeds, 0 for one) and ``count``; ``comparison`` itself when empty."""
    if comparison.empty:
        return comparison
    g = comparison.groupby(["k", "rule"])
    out = g["delta_ppl"].agg(["mean", "std", "count"]).reset_index().rename(columns={"mean": "delta_ppl"})
    first = g["layers"].first().map(lambda ls: ",".join(str(i) for i in ls)).reset_index()
    out = out.merge(first, on=["k", "rule"])
    out.loc[out["rule"] == "random", "layers"] = "(random)"
    out["std"] = out["std"].fillna(0.0)
    return out[["k", "rule", "layers", "delta_ppl", "std", "count"]]
