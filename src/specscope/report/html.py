"""One self-contained HTML report per run (figures inline as SVG; ``figures=`` also writes each as a file)."""
from __future__ import annotations

import html
import logging
import os
from pathlib import Path

import pandas as pd

from ..analysis import across_time
from ..analysis.coverage import RunContents, contents, nan_reasons
from ..analysis.findings import Finding, findings
from ..store.reader import Run, open_run
from . import edge_figures, figures, phenomena_figures, probe_figures, scalar_figures
from .format import facts_html, table_html
from .page import Page, write_html
from .terminal import kind_table

log = logging.getLogger(__name__)

#: probes with figures of their own below; every other probe (a custom one too) gets :func:`_probe_sections`' figure
DEDICATED = ("weights", "activations", "gradients", "trajectory")


def _weight_sections(page: Page, have: RunContents, metrics, spectra, across) -> None:
    """Heatmaps of stable rank and alpha_tail, final spectra and SD variation of the weight probe."""
    none = have.weights(1, "weight spectra")
    nan_alpha = nan_reasons(metrics[metrics["layer"] >= 0], "alpha_tail")
    no_alpha = f"α_tail is NaN for every hidden matrix: {nan_alpha}" if nan_alpha else "no α_tail of a hidden matrix"
    page.section("Stable rank per layer and step", lambda: figures.heatmaps(metrics, "stable_rank"),
                 "stable rank = Σλ / λ₁ of each weight matrix (λ = squared singular values); several parts of one layer "
                 "(experts, gates) are averaged.", none or "no stable rank of a hidden matrix")
    page.section("Tail exponent α_tail per layer and step", lambda: figures.heatmaps(metrics, "alpha_tail"),
                 "α_tail: −slope of ln p_j on ln j over the scale-selected tail window (rank-decay exponent)."
                 + (html.escape(f" NaN at {nan_alpha}.") if nan_alpha else ""), none or no_alpha)
    page.section("Final spectra with power-law fits", lambda: figures.final_spectra(spectra),
                 "Solid: eigen distribution p_j of each layer's matrix. Dashed: the least-squares power law over the "
                 "tail window.", none or "no weight spectra stored")
    page.section("Singular-distribution variation over time (SoSD)", lambda: figures.sd_variation(across),
                 "‖sd_t − sd_t'‖₂ between consecutive measurements; it falls and stays low once the spectrum stabilizes.",
                 none or have.weights(2, "SD variation"))


def _scalar_sections(page: Page, have: RunContents, scalars: pd.DataFrame) -> None:
    """Every logged scalar, grouped into panels (losses, learning rate, probe times...), and its last values."""
    names = scalar_figures.scalar_names(scalars)
    has_loss = any(scalar_figures.group_of(n) == "loss" for n in names)
    note = "" if have.has_tokens else "no tokens logged: loss against steps"
    missing = "no scalars logged" if not names else "no loss logged"
    page.section("Loss and training scalars", (lambda: scalar_figures.scalar_figure({"run": scalars})) if names else None,
                 note + ("" if has_loss else (note and "; ") + "no loss logged"), missing)
    if names:
        page.heading("Training scalars (last logged values)", table_html(scalar_figures.latest_scalars(scalars)))


def _probe_sections(page: Page, metrics: pd.DataFrame) -> None:
    """One section per probe in the run (built-in or custom): its metrics over steps (probes without figures of their
    own), and its values at the last measured step."""
    for probe in sorted(metrics["probe"].unique()):
        dedicated = probe in DEDICATED or probe.startswith("trajectory")
        if not dedicated:
            page.section(f"Probe {probe}: metrics over steps", lambda p=probe: probe_figures.probe_figure(metrics, p),
                         "One panel per metric, one line per layer and kind.",
                         f"probe {probe} recorded no finite value: {_statuses(metrics, probe)}")
        latest = probe_figures.latest_values(metrics, probe)
        step = int(metrics.loc[metrics["probe"] == probe, "step"].max())
        page.heading(f"Probe {probe}: values at step {step}", table_html(latest))


def _statuses(metrics: pd.DataFrame, probe: str) -> str:
    """The distinct reasons of ``probe``'s NaN values: one string."""
    bad = metrics[(metrics["probe"] == probe) & (metrics["status"] != "ok")]["status"]
    return "; ".join(sorted(set(bad))[:5]) or "no rows"


def render(run: Run, figures_dir: Path | None = None, figures_format: str | None = None) -> str:
    """The whole report of ``run`` as one self-contained HTML document (a str, figures inline as SVG; with
    ``figures_format`` (png, pdf, svg) each figure is also written into ``figures_dir``): every section, or one line
    saying what the run lacks."""
    meta = run.meta
    all_metrics, all_spectra = run.metrics(), run.spectra()
    metrics = all_metrics[all_metrics["probe"] == "weights"]
    spectra = all_spectra[all_spectra["probe"] == "weights"]
    scalars = run.scalars()
    across = across_time(run)
    have = contents(run)
    items = {f.name: f for f in findings(run)}
    page = Page(f"report · {run.run_id}", figures_dir, figures_format)
    cfg = meta.get("config", {}) or {}
    facts = {**(meta.get("summary", {}) or {}), "parameters": cfg.get("n_params"), "model": cfg.get("model"),
             "corpus": cfg.get("corpus")}
    page.add(facts_html(facts))
    if all_metrics.empty and scalars.empty:
        page.heading("Empty run", '<p class="note missing">this run holds no scalars and no probe measurements yet</p>')
    _scalar_sections(page, have, scalars)
    _weight_sections(page, have, metrics, spectra, across)
    lens = all_spectra[all_spectra["probe"].isin(["activations", "gradients"])]
    if not lens.empty:
        page.section("Activation and per-sample gradient spectra (Spectral Lens)", lambda: figures.lens_spectra(lens),
                     "Trace-normalized spectra over the fixed probe pool at chosen steps; dashed: the power law over the tail window.")
        page.section("RankMe and α_tail over training", lambda: figures.lens_trajectories(all_metrics),
                     "RankMe = exp(spectral entropy); α_tail of the activation spectrum is the early signal for token efficiency.")
    _phenomena_sections(page, run, have, items, across, scalars)
    _trajectory_sections(page, items["spectral_edge"], all_metrics, all_spectra, scalars)
    _probe_sections(page, all_metrics)
    table = kind_table(metrics)
    if not table.empty:
        page.heading("Per kind, mean over layers (first → last)", table_html(table))
    return page.html()


def _phenomena_sections(page: Page, run: Run, have: RunContents, items: dict[str, Finding], across, scalars) -> None:
    """SoSD, compression, the wave, the depth profile and pruning: a figure each where the finding applies."""
    from ..analysis.lifecycle import compression_frame, final_metric
    from ..analysis.sosd import SosdRule, sosd_curves, variation_series

    def why(f: Finding) -> str:
        return f.verdict.get("verdict", "")

    f = items["sosd"]
    rule = SosdRule()
    page.section("SoSD onset and the loss knee",
                 (lambda: phenomena_figures.sosd_figure(variation_series(run, rule, across), scalars, f.table, f.verdict,
                                                        sosd_curves(run))) if f.applies else None,
                 html.escape(f"{why(f)}. Onset: first step after the peak from which the smoothed "
                             f"sd_variation_lr = SD variation per step x ||W||_* / lr stays within a factor "
                             f"{rule.factor:g} of its floor (median of the last {rule.floor_frac:.0%} of the run); "
                             f"knee: the smoothed decrease rate of the validation loss falls below "
                             f"{rule.knee_frac:.0%} of its maximum."), why(f))
    few = have.weights(2, "compression")

    def compression():
        heat = compression_frame(run).rename(columns={"compression": "value"}).assign(metric="compression")
        return figures.heatmaps(heat, "compression", cmap="magma")

    page.section("Compression per layer and step", None if few else compression,
                 "compression = 1 − stable_rank(t) / stable_rank(first measurement).", few or "no compression measured")
    f = items["compression_waves"]
    page.section("Compression wave across depth", (lambda: phenomena_figures.wave_figure(f.table, f.verdict)) if f.applies
                 else None, html.escape(why(f)), why(f))
    d = items["depth_profile"]
    metric = d.verdict.get("metric", "alpha_tail")
    page.section(f"Depth profile of {metric}",
                 (lambda: phenomena_figures.depth_profile_figure(final_metric(run, metric), metric)) if d.applies else None,
                 html.escape(why(d)), why(d))
    p = items["pruning"]
    draw = p.applies and p.extras.get("importance") is not None
    page.section("Layer importance and pruning",
                 (lambda: phenomena_figures.pruning_figure(p.extras.get("importance"), p.table,
                                                           p.verdict.get("metric", "alpha_tail"))) if draw else None,
                 html.escape(why(p)), why(p))


def _trajectory_sections(page: Page, f: Finding, metrics, spectra, scalars) -> None:
    """The grokking watch (toy runs) and the spectral-edge figures, or one line saying what the run lacks."""
    grok = edge_figures.grokking(scalars, metrics)
    if grok is not None:
        page.section("Grokking watch", grok, "Dotted line: the grok step, the first evaluation from which test accuracy "
                     "stays ≥ 0.95. H_S: share of the Fourier energy in the 5 strongest frequencies; H_peak: in the strongest one.")
    v = f.verdict
    events = f.extras.get("events", pd.DataFrame())
    page.section("Trajectory gap ratio and phases (spectral edge)",
                 (lambda: edge_figures.gap_timeline(f.table, events)) if f.applies else None,
                 html.escape(f"Global trajectory window. Verdict: {v['verdict']}; phases {v.get('phases')}"
                             + (f"; best lag to validation loss {v['best_lag']} measurements "
                                f"(r = {v['best_corr']:.2f})" if v.get("best_lag") is not None else "")),
                 v["verdict"])
    if not events.empty:
        page.heading("Gap events", table_html(events))
    if not metrics["probe"].str.startswith("trajectory").any():
        return
    page.section("Singular values of the update window over time", lambda: edge_figures.window_spectra(spectra),
                 "σ_j of the last W parameter updates (global: all hidden matrices; one panel per tracked matrix).",
                 "no trajectory window with >= 2 updates")
    page.section("Stability of the top update directions", lambda: edge_figures.stability(metrics),
                 "|⟨u_j^A, u_j^B⟩| between the top directions of the two half-windows; 1 = the direction persists.",
                 "no stability of the top directions (windows too short)")


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, figures: str | None = None) -> Path:
    """Write the report of the run at ``run_dir`` to ``out`` (default: ``report.html`` inside the run directory),
    atomically; with ``figures`` (png, pdf or svg) each figure also as a file in ``<report stem>_figures/`` beside
    it. Returns the written report's path."""
    run = open_run(run_dir)
    return write_html(out if out is not None else run.dir / "report.html", lambda d: render(run, d, figures))
