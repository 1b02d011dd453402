"""One self-contained HTML report per run (figures embedded as PNG)."""
from __future__ import annotations

import base64
import html
import io
import logging
import os
from pathlib import Path

from matplotlib.figure import Figure

from ..analysis import across_time
from ..analysis.edge import edge_analysis
from ..store.artifacts import load_artifact
from ..store.reader import Run, open_run
from ..store.writer import atomic_write_bytes
from . import edge_figures, figures, phenomena_figures
from .terminal import kind_table

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1500px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
img{max-width:100%}table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ddd;padding:.25rem .5rem}
.note{color:#666;font-size:.85rem}code{background:#f4f4f4;padding:0 .2rem}
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def _section(title: str, fig: Figure | None, note: str = "") -> str:
    if fig is None:
        return f"<h2>{html.escape(title)}</h2><p class=note>No data for this figure.</p>"
    return (f"<h2>{html.escape(title)}</h2>" + (f"<p class=note>{note}</p>" if note else "")
            + f'<img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}">')


def render(run: Run) -> str:
    meta = run.meta
    all_metrics, all_spectra = run.metrics(), run.spectra()
    metrics = all_metrics[all_metrics["probe"] == "weights"]
    spectra = all_spectra[all_spectra["probe"] == "weights"]
    scalars = run.scalars()
    across = across_time(run)
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>specscope · {html.escape(run.run_id)}</title>"
             f"<style>{CSS}</style></head><body><h1>specscope report · {html.escape(run.run_id)}</h1>"]
    cfg = meta.get("config", {})
    summ = meta.get("summary", {})
    facts = {**{k: v for k, v in summ.items()}, "parameters": cfg.get("n_params"), "model": cfg.get("model"),
             "corpus": cfg.get("corpus")}
    parts.append("<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(str(v))}</code></td></tr>"
                                     for k, v in facts.items() if v is not None) + "</table>")
    parts.append(_section("Loss", figures.loss_curves(scalars) if not scalars.empty else None))
    parts.append(_section("Stable rank per layer and step", figures.heatmaps(metrics, "stable_rank"),
                          "stable rank = Σλ / λ₁ of each weight matrix (λ = squared singular values)."))
    parts.append(_section("Tail exponent α_tail per layer and step", figures.heatmaps(metrics, "alpha_tail"),
                          "α_tail: −slope of ln p_j on ln j over the scale-selected tail window (rank-decay exponent)."))
    parts.append(_section("Final spectra with power-law fits", figures.final_spectra(spectra),
                          "Solid: eigen distribution p_j of each layer's matrix. Dashed: the least-squares power law over the tail window."))
    parts.append(_section("Singular-distribution variation over time (SoSD)", figures.sd_variation(across),
                          "‖sd_t − sd_t'‖₂ between consecutive measurements; it falls and stays low once the spectrum stabilizes."))
    lens = all_spectra[all_spectra["probe"].isin(["activations", "gradients"])]
    if not lens.empty:
        parts.append(_section("Activation and per-sample gradient spectra (Spectral Lens)", figures.lens_spectra(lens),
                              "Trace-normalized spectra over the fixed probe pool at chosen steps; dashed: the power law over the tail window."))
        parts.append(_section("RankMe and α_tail over training", figures.lens_trajectories(all_metrics),
                              "RankMe = exp(spectral entropy); α_tail of the activation spectrum is the early signal for token efficiency."))
    parts.extend(_phenomena_sections(run, across, scalars))
    parts.extend(_trajectory_sections(run, all_metrics, all_spectra, scalars))
    table = kind_table(metrics)
    if not table.empty:
        parts.append("<h2>Per kind, mean over layers (first → last)</h2>" + table.to_html(index=False, border=0))
    parts.append("</body></html>")
    return "".join(parts)


def _phenomena_sections(run: Run, across, scalars) -> list[str]:
    from ..analysis.lifecycle import compression_frame, depth_profiles, final_metric, wave_verdict, wave_table
    from ..analysis.sosd import sosd, sosd_curves

    parts = []
    if across.empty or across["step"].nunique() < 3:
        return parts
    table, verdict = sosd(run)
    parts.append(_section("SoSD onset and the loss knee", phenomena_figures.sosd_figure(across, scalars, table, verdict,
                                                                                       sosd_curves(run)),
                          html.escape(f"{verdict['verdict']}. Onset: first step after the peak from which SD variation stays "
                                      "below 5% of it; knee: the smoothed loss-decrease rate falls below 10% of its maximum.")))
    comp = compression_frame(run)
    heat = comp.rename(columns={"compression": "value"}).assign(metric="compression")
    parts.append(_section("Compression per layer and step", figures.heatmaps(heat, "compression", cmap="magma"),
                          "compression = 1 − stable_rank(t) / stable_rank(first measurement)."))
    wave = wave_table(comp)
    wv = wave_verdict(wave)
    parts.append(_section("Compression wave across depth", phenomena_figures.wave_figure(wave, wv), html.escape(wv["verdict"])))
    _, pv = depth_profiles(run)
    parts.append(_section("Depth profile of α_tail", phenomena_figures.depth_profile_figure(final_metric(run), "alpha_tail"),
                          html.escape(pv["verdict"])))
    saved = load_artifact(run.dir, "pruning")
    if saved is not None:
        tables, verdict = saved
        parts.append(_section("Layer importance and pruning", phenomena_figures.pruning_figure(
            tables.get("importance"), tables.get("summary"), verdict.get("metric", "alpha_tail")), html.escape(verdict["verdict"])))
    return parts


def _trajectory_sections(run: Run, metrics, spectra, scalars) -> list[str]:
    parts = []
    grok = edge_figures.grokking(scalars, metrics)
    if grok is not None:
        parts.append(_section("Grokking watch", grok, "Dotted line: the first evaluation with test accuracy ≥ 0.95. "
                              "H_S: share of the Fourier energy in the 5 strongest frequencies; H_peak: in the strongest one."))
    if not metrics["probe"].str.startswith("trajectory").any():
        return parts
    table, events, verdict = edge_analysis(run)
    if not table.empty:
        parts.append(_section("Trajectory gap ratio and phases (spectral edge)", edge_figures.gap_timeline(table, events),
                              html.escape(f"Global trajectory window. Verdict: {verdict['verdict']}; phases {verdict['phases']}; "
                                          f"peak gap ratio {verdict['peak_gap_ratio']:.3g} at step {verdict['peak_step']}"
                                          + (f"; best lag to validation loss {verdict['best_lag']} measurements "
                                             f"(r = {verdict['best_corr']:.2f})" if verdict["best_lag"] is not None else ""))))
        if not events.empty:
            parts.append("<h2>Gap events</h2>" + events.to_html(index=False, border=0, float_format="{:.3g}".format))
    parts.append(_section("Singular values of the update window over time", edge_figures.window_spectra(spectra),
                          "σ_j of the last W parameter updates (global: all block matrices; one panel per tracked matrix)."))
    parts.append(_section("Stability of the top update directions", edge_figures.stability(metrics),
                          "|⟨u_j^A, u_j^B⟩| between the top directions of the two half-windows; 1 = the direction persists."))
    return parts


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` for a run (default: inside the run directory); returns its path."""
    run = open_run(run_dir)
    path = Path(out) if out is not None else run.dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render(run).encode("utf-8"))
    return path
