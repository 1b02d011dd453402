"""Compression waves per kind, the alpha variants of the depth profile, importance over core blocks and the pruning
rule's direction, each on a planted answer."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_weights_run as _write
from specscope.analysis.findings import findings, to_json
from specscope.analysis.lifecycle import PAPER_ALPHA_RANGE, depth_profiles, final_metric, profile_verdict, sv_decay_alpha
from specscope.analysis.pruning import (candidates, core_blocks, importance_verdict, rule_choice, rule_direction,
                                        spectral_order)
from specscope.analysis.waves import compression_waves, front_fit, half_step
from specscope.experiments.lifecycle import LifecycleExperiment, lifecycle_claims, over_seeds

R = 16


def _sv(sr: float) -> np.ndarray:
    """s_1 = 1 and s_j = b (j >= 2): stable rank 1 + (R - 1) b^2."""
    return np.array([1.0] + [np.sqrt((sr - 1) / (R - 1))] * (R - 1))


def _wave(n_layers=6, speeds=None, t0=40.0, width=8.0, steps=range(0, 801, 5)):
    """Planted waves: layer l of kind k compresses as a logistic in time centred at t0 + l / v_k (v_k layers per step;
    v < 0: the wave starts at the last layer). Compression is relative to step 0, as the analysis measures it."""
    speeds = speeds or {"q": 0.02, "k": 0.05, "v": -0.025}
    rows = []
    for kind, v in speeds.items():
        for layer in range(n_layers):
            centre = t0 + (layer if v > 0 else n_layers - 1 - layer) / abs(v)
            c = lambda s: 0.5 / (1 + np.exp(-(s - centre) / width))  # noqa: E731
            for s in steps:
                rows.append((s, layer, kind, _sv(10 * (1 - c(s)) / (1 - c(0)))))
    return rows


def test_half_step_and_front_fit_known_answers():
    steps = np.array([0, 10, 20, 30])
    assert half_step(steps, np.array([0.0, 0.2, 0.6, 0.8])) == pytest.approx(10 + 10 * (0.5 - 0.25) / (0.75 - 0.25))
    assert np.isnan(half_step(steps, np.zeros(4)))  # no final compression: no t50
    layers = np.arange(5.0)
    fit = front_fit(layers, 100 + 25 * layers)  # exact line: 25 steps per layer, 0.04 layers per step
    assert fit["velocity"] == pytest.approx(0.04) and fit["direction"] == "early -> late"
    noisy = front_fit(layers, 100 + np.array([0, 30, -20, 10, -5.0]))  # no trend: the slope's interval holds 0
    assert noisy["direction"] == "not significant" and np.isnan(noisy["velocity_ci_lower"])
    assert front_fit(layers[:2], layers[:2])["direction"] == "too few layers"


def test_planted_waves_per_kind_give_their_velocity(tmp_path):
    run = _write(tmp_path / "w", _wave())
    table, verdict = compression_waves(run)
    by = verdict["by_kind"]
    assert set(by) == {"q", "k", "v"}  # every block kind of the run, not only the pooled wave
    for kind, v in {"q": 0.02, "k": 0.05}.items():
        assert by[kind]["direction"] == "early -> late"
        assert by[kind]["velocity"] == pytest.approx(v, rel=0.1)
        assert by[kind]["velocity_ci_lower"] <= by[kind]["velocity"] <= by[kind]["velocity_ci_upper"]
        t50 = np.asarray(by[kind]["t50"])
        np.testing.assert_allclose(np.diff(t50), 1 / v, rtol=0.1)  # each layer reaches half compression 1/v later
    assert by["v"]["direction"] == "late -> early" and by["v"]["velocity"] == pytest.approx(-0.025, rel=0.1)
    assert "per kind: q: early -> late" in verdict["verdict"]
    doc = json.loads(to_json(findings(run)))
    wave = next(f for f in doc if f["name"] == "compression_waves")["verdict"]
    for kind in ("q", "k"):  # `specscope findings RUN --json` exposes each kind's velocity and its interval
        assert {"velocity", "velocity_ci_lower", "velocity_ci_upper", "direction", "t50"} <= set(wave["by_kind"][kind])


def test_simultaneous_compression_has_no_direction(tmp_path):
    run = _write(tmp_path / "s", _wave(speeds={"q": 1e9}))  # every layer at the same time (1e-9 steps apart)
    by = compression_waves(run)[1]["by_kind"]["q"]
    assert by["direction"] == "not significant" or abs(by["front_slope"]) < 1e-3


def test_sv_decay_alpha_on_a_power_law():
    j = np.arange(1, 201, dtype=float)
    assert sv_decay_alpha(3 * j ** -0.3) == pytest.approx(0.3, rel=1e-12)
    rng = np.random.default_rng(0)
    s = j ** -0.4 * np.exp(0.05 * rng.standard_normal(200))
    x, y, w = np.log(j), np.log(np.sort(s)[::-1]), 1 / j
    ref = -np.polyfit(x, y, 1, w=np.sqrt(w))[0]  # polyfit weights multiply the residuals: sqrt of the WLS weights
    assert sv_decay_alpha(s) == pytest.approx(ref, rel=1e-10)
    assert np.isnan(sv_decay_alpha([1.0, 0.0, 0.0]))


def test_alpha_sv_profile_from_stored_spectra(tmp_path):
    j = np.arange(1, 33, dtype=float)
    planted = {layer: 0.2 + 0.05 * layer for layer in range(5)}
    rows = [(s, layer, "q", j ** -a) for s in (0, 10) for layer, a in planted.items()]
    run = _write(tmp_path / "p", rows)
    fm = final_metric(run, "alpha_sv").set_index("layer")["alpha_sv"]
    np.testing.assert_allclose(fm.to_numpy(), list(planted.values()), rtol=1e-10)
    table, verdict = depth_profiles(run, "alpha_sv")
    assert table.loc[0, "shape"] == "monotone" and verdict["metric"] == "alpha_sv"
    assert PAPER_ALPHA_RANGE[0] <= np.median(fm) <= PAPER_ALPHA_RANGE[1]


def test_zigzag_profile_is_no_shape():
    zigzag = 0.3 + 0.05 * (np.arange(10) % 2)  # interior peaks everywhere, no curvature
    pv = profile_verdict(np.arange(10.0), zigzag)
    assert pv["shape"] == "no shape" and not pv["inverted_u"]


@pytest.mark.parametrize("metric", ["alpha_sv", "alpha_mle"])
def test_planted_importance_recovered_in_the_rule_direction(metric):
    layers = np.arange(8)
    importance = np.array([9.0, 0.3, 0.9, 0.1, 0.7, 0.5, 0.2, 4.0])  # a planted ranking; 0 and 7 are boundary blocks
    # a rank-decay exponent rises with importance; an ESD density exponent falls as it rises (1 + 1 / a)
    alpha = 0.2 + 0.05 * importance if rule_direction(metric) > 0 else 1 + 1 / (0.2 + 0.05 * importance)
    alpha = pd.Series(alpha, index=pd.Index(layers, name="layer"))
    order = spectral_order(alpha, metric)
    assert order == [int(i) for i in np.argsort(importance) if i != 0]  # least important first, block 0 kept
    assert rule_choice("spectral", 8, 3, alpha, metric) == sorted(order[:3])
    v = importance_verdict(pd.DataFrame({"layer": layers, "delta_loss": importance, metric: alpha}), metric)
    assert v["n_core"] == 6 and v["rho_core"] == pytest.approx(rule_direction(metric) * 1.0)
    assert v["direction_check"] == "agrees" and v["p_core"] < 0.01
    flipped = importance_verdict(pd.DataFrame({"layer": layers, "delta_loss": -importance, metric: alpha}), metric)
    assert flipped["direction_check"] == "disagrees"
    assert ("lowest goes first" if metric == "alpha_sv" else "highest goes first") in v["direction"]


def test_random_baseline_draws_from_the_spectral_candidates():
    alpha = pd.Series([1.0, 2.0, np.nan, 0.5, 0.7, 0.9], index=range(6))
    pool = candidates(alpha)
    assert pool == [1, 3, 4, 5]  # block 0 (kept) and block 2 (no alpha) are never candidates
    assert set(spectral_order(alpha, "alpha_sv")) == set(pool)
    drawn = set()
    for seed in range(200):
        pick = rule_choice("random", 6, 2, alpha, "alpha_sv", seed)
        assert len(pick) == 2 and set(pick) <= set(pool)
        drawn |= set(pick)
    assert drawn == set(pool)
    assert core_blocks([3, 0, 1, 2]) == [1, 2]


def test_claims_from_a_hand_table():
    rows = []
    for seed, (slope, rho, ratio) in enumerate([(20.0, 0.8, 1.5), (25.0, 0.7, 1.4), (22.0, 0.75, 1.6)]):
        for depth in (4, 8):
            rows.append({"depth": depth, "seed": seed, "wave_q_slope": slope, "wave_q_slope_lo": slope - 5,
                         "wave_q_slope_hi": slope + 5, "wave_q_direction": "early -> late", "wave_k_slope": -slope,
                         "wave_k_slope_lo": -slope - 5, "wave_k_slope_hi": -slope + 5, "wave_k_direction": "late -> early",
                         "gradient_reversal_step": 100.0, "qk_vo_asymmetry": 3.0 + seed, "rho_core": rho,
                         "direction_check": "agrees", "last_n_over_spectral": ratio,
                         **{f"{m}_{x}": val for m in ("alpha_sv", "alpha_weighted", "alpha_mle")
                            for x, val in (("curvature", -0.01 - 0.001 * seed), ("curvature_lo", -0.02), ("curvature_hi", -0.005),
                                           ("shape", "inverted U"), ("median", {"alpha_sv": 0.3, "alpha_weighted": 3.0,
                                                                                "alpha_mle": 4.0}[m] + 0.01 * seed))}})
    c = lifecycle_claims(pd.DataFrame(rows), {s: {"beta": 0.25 + 0.01 * s, "r2": 0.9} for s in range(3)}).set_index("claim")
    v = c["verdict"].to_dict()
    assert v["compression wave of W_Q moves early -> late (velocity, layers/step)"] == "reproduced"
    assert v["compression wave of W_K moves early -> late (velocity, layers/step)"] == "not reproduced"
    assert c.loc["compression wave of W_Q moves early -> late (velocity, layers/step)", "mean"] == pytest.approx(3 / 67)
    assert v["alpha_sv: W_Q alpha forms an inverted U across depth (deepest model)"] == "reproduced"
    assert v["alpha_sv: values in the paper's Weighted Alpha range"] == "reproduced"
    assert v["alpha_weighted: values in the paper's Weighted Alpha range"] == "not reproduced"
    assert v["alpha predicts layer importance over core layers (Spearman rho)"] == "reproduced"
    assert v["spectral pruning beats Last-N (Last-N / spectral delta-perplexity)"] == "reproduced"
    assert v["delta_alpha ~ L^beta across depths (alpha_sv)"] == "reproduced"
    assert c.loc["alpha predicts layer importance over core layers (Spearman rho)", "n"] == 3  # over the seeds
    one = over_seeds([0.5], [0.4], [0.6])  # one seed: the run's own interval
    assert (one.lo, one.hi) == (0.4, 0.6)


def test_dense_early_schedule():
    cfg = LifecycleExperiment(steps=300, warmup=30, early_every=2, per_decade=10, probe_every=25)
    due = [s for s in range(301) if cfg.probe_schedule()(s)]
    assert all(s in due for s in range(0, 31, 2)) and all(s in due for s in range(0, 301, 25))
    assert len(due) == 39  # dense through warmup, sparse after
