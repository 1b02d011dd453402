"""One self-contained HTML report per run (figures embedded as PNG)."""
from __future__ import annotations

import base64
import html
import io
import logging
import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..analysis import across_time
from ..analysis.coverage import RunContents, contents, nan_reasons
from ..analysis.findings import Finding, findings
from ..store.reader import Run, open_run
from ..store.writer import atomic_write_bytes
from . import edge_figures, figures, phenomena_figures
from .terminal import kind_table

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1500px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
img{max-width:100%}table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ddd;padding:.25rem .5rem}
.note{color:#666;font-size:.85rem}.missing{color:#8a5a00}code{background:#f4f4f4;padding:0 .2rem}
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def _section(title: str, fig: Figure | None, note: str = "", missing: str | None = None) -> str:
    """A titled figure with its note; without a figure, one line saying what the run lacks (``missing``)."""
    if fig is None:
        return f'<h2>{html.escape(title)}</h2><p class="note missing">{html.escape(missing or "No data for this figure.")}</p>'
    return (f"<h2>{html.escape(title)}</h2>" + (f"<p class=note>{note}</p>" if note else "")
            + f'<img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}">')


def _weight_sections(have: RunContents, metrics, spectra, across) -> list[str]:
    """Heatmaps of stable rank and alpha_tail, final spectra and SD variation of the weight probe."""
    none = have.weights(1, "weight spectra")
    sr = figures.heatmaps(metrics, "stable_rank")
    alpha = figures.heatmaps(metrics, "alpha_tail")
    nan_alpha = nan_reasons(metrics[metrics["layer"] >= 0], "alpha_tail")
    no_alpha = f"α_tail is NaN for every hidden matrix: {nan_alpha}" if nan_alpha else "no α_tail of a hidden matrix"
    return [
        _section("Stable rank per layer and step", sr, "stable rank = Σλ / λ₁ of each weight matrix (λ = squared singular "
                 "values); several parts of one layer (experts, gates) are averaged.",
                 none or "no stable rank of a hidden matrix"),
        _section("Tail exponent α_tail per layer and step", alpha,
                 "α_tail: −slope of ln p_j on ln j over the scale-selected tail window (rank-decay exponent)."
                 + (html.escape(f" NaN at {nan_alpha}.") if nan_alpha else ""), none or no_alpha),
        _section("Final spectra with power-law fits", figures.final_spectra(spectra),
                 "Solid: eigen distribution p_j of each layer's matrix. Dashed: the least-squares power law over the "
                 "tail window.", none),
        _section("Singular-distribution variation over time (SoSD)", figures.sd_variation(across),
                 "‖sd_t − sd_t'‖₂ between consecutive measurements; it falls and stays low once the spectrum stabilizes.",
                 none or have.weights(2, "SD variation")),
    ]


def render(run: Run) -> str:
    """The whole report of ``run`` as one self-contained HTML document (a str, figures embedded as PNG): every
    section, or one line saying what the run lacks."""
    meta = run.meta
    all_metrics, all_spectra = run.metrics(), run.spectra()
    metrics = all_metrics[all_metrics["probe"] == "weights"]
    spectra = all_spectra[all_spectra["probe"] == "weights"]
    scalars = run.scalars()
    across = across_time(run)
    have = contents(run)
    items = {f.name: f for f in findings(run)}
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>specscope · {html.escape(run.run_id)}</title>"
             f"<style>{CSS}</style></head><body><h1>specscope report · {html.escape(run.run_id)}</h1>"]
    cfg = meta.get("config", {})
    summ = meta.get("summary", {})
    facts = {**{k: v for k, v in summ.items()}, "parameters": cfg.get("n_params"), "model": cfg.get("model"),
             "corpus": cfg.get("corpus")}
    parts.append("<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(str(v))}</code></td></tr>"
                                     for k, v in facts.items() if v is not None) + "</table>")
    has_loss = have.loss_points > 0 or have.val_loss_points > 0
    parts.append(_section("Loss", figures.loss_curves(scalars) if has_loss else None,
                          "" if have.has_tokens else "no tokens logged: loss against steps", "no loss logged"))
    parts.extend(_weight_sections(have, metrics, spectra, across))
    lens = all_spectra[all_spectra["probe"].isin(["activations", "gradients"])]
    if not lens.empty:
        parts.append(_section("Activation and per-sample gradient spectra (Spectral Lens)", figures.lens_spectra(lens),
                              "Trace-normalized spectra over the fixed probe pool at chosen steps; dashed: the power law over the tail window."))
        parts.append(_section("RankMe and α_tail over training", figures.lens_trajectories(all_metrics),
                              "RankMe = exp(spectral entropy); α_tail of the activation spectrum is the early signal for token efficiency."))
    parts.extend(_phenomena_sections(run, have, items, across, scalars))
    parts.extend(_trajectory_sections(items["spectral_edge"], all_metrics, all_spectra, scalars))
    table = kind_table(metrics)
    if not table.empty:
        parts.append("<h2>Per kind, mean over layers (first → last)</h2>" + table.to_html(index=False, border=0))
    parts.append("</body></html>")
    return "".join(parts)


def _phenomena_sections(run: Run, have: RunContents, items: dict[str, Finding], across, scalars) -> list[str]:
    """SoSD, compression, the wave, the depth profile and pruning: a figure each where the finding applies."""
    from ..analysis.lifecycle import compression_frame, final_metric
    from ..analysis.sosd import SosdRule, sosd_curves, variation_series

    def why(f: Finding) -> str:
        return f.verdict.get("verdict", "")

    parts = []
    f = items["sosd"]
    rule = SosdRule()
    fig = (phenomena_figures.sosd_figure(variation_series(run, rule, across), scalars, f.table, f.verdict, sosd_curves(run))
           if f.applies else None)
    parts.append(_section("SoSD onset and the loss knee", fig,
                          html.escape(f"{why(f)}. Onset: first step after the peak from which the smoothed "
                                      f"sd_variation_lr = SD variation per step x ||W||_* / lr stays within a factor "
                                      f"{rule.factor:g} of its floor (median of the last {rule.floor_frac:.0%} of the run); "
                                      f"knee: the smoothed decrease rate of the validation loss falls below "
                                      f"{rule.knee_frac:.0%} of its maximum."),
                          why(f)))
    few = have.weights(2, "compression")
    heat = None if few else compression_frame(run).rename(columns={"compression": "value"}).assign(metric="compression")
    fig = figures.heatmaps(heat, "compression", cmap="magma") if heat is not None else None
    parts.append(_section("Compression per layer and step", fig, "compression = 1 − stable_rank(t) / stable_rank(first "
                          "measurement).", few or "no compression measured"))
    f = items["compression_waves"]
    fig = phenomena_figures.wave_figure(f.table, f.verdict) if f.applies else None
    parts.append(_section("Compression wave across depth", fig, html.escape(why(f)), why(f)))
    f = items["depth_profile"]
    metric = f.verdict.get("metric", "alpha_tail")
    parts.append(_section(f"Depth profile of {metric}", phenomena_figures.depth_profile_figure(final_metric(run, metric), metric)
                          if f.applies else None, html.escape(why(f)), why(f)))
    f = items["pruning"]
    fig = (phenomena_figures.pruning_figure(f.extras.get("importance"), f.table, f.verdict.get("metric", "alpha_tail"))
           if f.applies and f.extras.get("importance") is not None else None)
    parts.append(_section("Layer importance and pruning", fig, html.escape(why(f)), why(f)))
    return parts


def _trajectory_sections(f: Finding, metrics, spectra, scalars) -> list[str]:
    """The grokking watch (toy runs) and the spectral-edge figures, or one line saying what the run lacks."""
    parts = []
    grok = edge_figures.grokking(scalars, metrics)
    if grok is not None:
        parts.append(_section("Grokking watch", grok, "Dotted line: the grok step, the first evaluation from which test accuracy stays ≥ 0.95. "
                              "H_S: share of the Fourier energy in the 5 strongest frequencies; H_peak: in the strongest one."))
    v = f.verdict
    fig = edge_figures.gap_timeline(f.table, f.extras.get("events", pd.DataFrame())) if f.applies else None
    parts.append(_section("Trajectory gap ratio and phases (spectral edge)", fig,
                          html.escape(f"Global trajectory window. Verdict: {v['verdict']}; phases {v.get('phases')}"
                                      + (f"; best lag to validation loss {v['best_lag']} measurements "
                                         f"(r = {v['best_corr']:.2f})" if v.get("best_lag") is not None else "")),
                          v["verdict"]))
    events = f.extras.get("events", pd.DataFrame())
    if not events.empty:
        parts.append("<h2>Gap events</h2>" + events.to_html(index=False, border=0, float_format="{:.3g}".format))
    if not metrics["probe"].str.startswith("trajectory").any():
        return parts
    parts.append(_section("Singular values of the update window over time", edge_figures.window_spectra(spectra),
                          "σ_j of the last W parameter updates (global: all hidden matrices; one panel per tracked matrix).",
                          "no trajectory window with >= 2 updates"))
    parts.append(_section("Stability of the top update directions", edge_figures.stability(metrics),
                          "|⟨u_j^A, u_j^B⟩| between the top directions of the two half-windows; 1 = the direction persists.",
                          "no stability of the top directions (windows too short)"))
    return parts


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of the run at ``run_dir`` to ``out`` (default: ``report.html`` inside the run directory),
    atomically; returns the written path."""
    run = open_run(run_dir)
    path = Path(out) if out is not None else run.dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render(run).encode("utf-8"))
    return path
