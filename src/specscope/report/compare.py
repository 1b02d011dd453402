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
from .format import table_html as _table
from .lens_figures import lens_figure, taxonomy_figure
from .page import Page, write_html


def render_comparison(runs: Sequence[Run], target: float | None = None, chain: bool = False,
                      names: Sequence[str] | None = None) -> str:
    """The comparison report of ``runs`` as one self-contained HTML document (a str, figures inline as SVG): the
    token-efficiency forecast across batch sizes, or with ``chain`` the taxonomy of the chain's transitions
    (``names``: stage names, default the run ids). ``target``: the matched validation loss (None: the loosest
    every run reached; for a chain, each transition at the loosest loss both of its runs reached)."""
    given = target
    target = target if target is not None else common_target(runs)
    names = list(names) if names is not None else [r.run_id for r in runs]
    title = "intervention taxonomy" if chain else "token efficiency across batch sizes"
    page = Page(title)
    page.add(f"<p class=note>{len(runs)} runs; target validation loss {target:.4f}, the "
             + ("one given" if given is not None else "loosest every run reached")
             + " (T = tokens at the first evaluation at or below it; spectra compared at this matched loss).</p>")
    if chain:
        table = taxonomy(runs, given, names=names)
        stages = chain_stages(runs, target, names)
        page.heading("Runs in chain order", _table(stages))
        pairwise = "" if given is not None else "Each transition at the loosest loss both of its runs reached (column target). "
        page.heading("Transitions", "<p class=note>" + pairwise + "tok_gain = T(a)/T(b) − 1, thr_gain = Q(b)/Q(a) − 1; "
                     "d_alpha_head / d_alpha_tail: change of the deepest activation spectrum's head / tail exponent; grad_js / "
                     "d_grad_rankme: Jensen-Shannon divergence and relative RankMe change of the per-sample gradient spectrum; "
                     "act_shift / grad_shift: the activation (head) and gradient displacements in the units of "
                     "specscope.analysis.lens.TaxonomyRule, the larger one the spectral lean. Labels, checked in this order: no "
                     "measurable gain (both gains within 2% for one seed), activation-led / gradient-led (a token gain, not traded "
                     "away), throughput-leaning (a throughput gain, not traded away), else mixed / trade-off."
                     "</p>" + _table(table))
        page.section("Loss, matched-loss spectra and the taxonomy", lambda: taxonomy_figure(runs, names, table, target))
    else:
        table, verdict, curve = lens_summary(runs, target)
        rho = verdict["rho_within_family"]
        page.heading("Forecast", "<p class=note>" + html.escape(
            verdict["verdict"] + ("" if rho is None else f"; Spearman rho(early alpha_tail, eps_tok) within family = {rho:.2f}"))
            + "</p>" + _table(table.sort_values(["family", "batch"])))
        page.heading("rho vs the early budget", _table(curve))
        page.section("Loss, matched-loss activation spectra, early alpha_tail, rho vs budget",
                     lambda: lens_figure(runs, curve, target))
    return page.html()


def write_comparison(runs: Sequence[Run], out: str | os.PathLike, target: float | None = None, chain: bool = False,
                     names: Sequence[str] | None = None) -> Path:
    """Write :func:`render_comparison` to ``out`` (atomically, parent directories created): the written path."""
    return write_html(out, lambda _: render_comparison(runs, target, chain, names))
