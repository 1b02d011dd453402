"""One HTML report over several runs (SPEC 5.6-5.7): a batch-size family's token efficiency and
early forecast, or a chain of interventions' taxonomy. Written by ``specscope experiment lens |
taxonomy`` into their output directory, and by ``specscope forecast | taxonomy --report FILE``."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Sequence

from ..analysis.lens import chain_stages, common_target, lens_summary, taxonomy
from ..store.reader import Run
from ..store.writer import atomic_write_bytes
from .html import CSS, _section
from .lens_figures import lens_figure, taxonomy_figure


def _table(df) -> str:
    return df.to_html(index=False, border=0, float_format="{:.4g}".format, na_rep="–")


def render_comparison(runs: Sequence[Run], target: float | None = None, chain: bool = False,
                      names: Sequence[str] | None = None) -> str:
    """The comparison report of ``runs`` as one self-contained HTML document (a str, figures embedded as PNG): the
    token-efficiency forecast across batch sizes, or with ``chain`` the taxonomy of the chain's transitions
    (``names``: stage names, default the run ids). ``target``: the matched validation loss (None: the loosest
    every run reached; for a chain, each transition at the loosest loss both of its runs reached)."""
    given = target
    target = target if target is not None else common_target(runs)
    names = list(names) if names is not None else [r.run_id for r in runs]
    title = "intervention taxonomy" if chain else "token efficiency across batch sizes"
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>specscope · {title}</title><style>{CSS}</style></head>"
             f"<body><h1>specscope · {title}</h1><p class=note>{len(runs)} runs; target validation loss {target:.4f}, the "
             + ("one given" if given is not None else "loosest every run reached")
             + " (T = tokens at the first evaluation at or below it; spectra compared at this matched loss).</p>"]
    if chain:
        table = taxonomy(runs, given, names=names)
        stages = chain_stages(runs, target, names)
        parts.append("<h2>Runs in chain order</h2>" + _table(stages))
        pairwise = "" if given is not None else "Each transition at the loosest loss both of its runs reached (column target). "
        parts.append("<h2>Transitions</h2><p class=note>" + pairwise + "tok_gain = T(a)/T(b) − 1, thr_gain = Q(b)/Q(a) − 1; "
                     "d_alpha_head / d_alpha_tail: change of the deepest activation spectrum's head / tail exponent; grad_js / "
                     "d_grad_rankme: Jensen-Shannon divergence and relative RankMe change of the per-sample gradient spectrum; "
                     "act_shift / grad_shift: the activation (head) and gradient displacements in the units of "
                     "specscope.analysis.lens.TaxonomyRule, the larger one the spectral lean. Labels, checked in this order: no "
                     "measurable gain (both gains within 2% for one seed), activation-led / gradient-led (a token gain, not traded "
                     "away), throughput-leaning (a throughput gain, not traded away), else mixed / trade-off."
                     "</p>" + _table(table))
        parts.append(_section("Loss, matched-loss spectra and the taxonomy", taxonomy_figure(runs, names, table, target)))
    else:
        table, verdict, curve = lens_summary(runs, target)
        rho = verdict["rho_within_family"]
        parts.append("<h2>Forecast</h2><p class=note>" + html.escape(
            verdict["verdict"] + ("" if rho is None else f"; Spearman rho(early alpha_tail, eps_tok) within family = {rho:.2f}"))
            + "</p>" + _table(table.sort_values(["family", "batch"])))
        parts.append("<h2>rho vs the early budget</h2>" + _table(curve))
        parts.append(_section("Loss, matched-loss activation spectra, early alpha_tail, rho vs budget",
                              lens_figure(runs, curve, target)))
    parts.append("</body></html>")
    return "".join(parts)


def write_comparison(runs: Sequence[Run], out: str | os.PathLike, target: float | None = None, chain: bool = False,
                     names: Sequence[str] | None = None) -> Path:
    """Write :func:`render_comparison` to ``out`` (atomically, parent directories created): the written path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render_comparison(runs, target, chain, names).encode("utf-8"))
    return path
