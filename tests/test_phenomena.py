"""SoSD, lifecycle, pruning and findings, each on a synthetic run store with a planted answer."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import t as student_t

from conftest import write_weights_run as _write
from specscope.analysis.findings import findings, to_json, to_text
from specscope.analysis.lifecycle import compression_waves, depth_profiles, depth_scaling, profile_verdict
from specscope.analysis.pruning import pruning_verdict, rule_choice, spectral_order
from specscope.analysis.sosd import loss_knee, onset_step, sosd

R = 16


def _spectrum_with_stable_rank(sr: float) -> np.ndarray:
    """s_1 = 1 and s_j = b (j >= 2): stable rank 1 + (R - 1) b^2."""
    return np.array([1.0] + [np.sqrt((sr - 1) / (R - 1))] * (R - 1))


def test_onset_and_knee_rules():
    steps = np.arange(0, 500, 10)
    sdv = np.where(steps < 200, 1.0 / (1 + steps / 50), 1e-4)
    sdv[0] = np.nan
    assert onset_step(steps, sdv, factor=2.0) == 200  # from step 200 on, exactly the floor 1e-4
    sdv[-5:] = 0.9  # a late rise that lasts longer than the smoothing window: no step from which it stays settled
    assert onset_step(steps, sdv, factor=2.0) is None
    t = np.arange(0, 2000)
    tau = 400 / np.log(10)
    knee = loss_knee(t, 2 + 3 * np.exp(-t / tau), knee_frac=0.1, smooth_frac=0.02)
    assert abs(knee - 400) <= 50  # 2.5% of the run: the smoothing window shifts the measured maximum rate


def test_sosd_recovers_a_planted_onset(tmp_path):
    rng = np.random.default_rng(0)
    steps = list(range(0, 1001, 25))
    shapes = {}
    rows = []
    for layer in range(2):
        for kind in ("q", "v"):
            a, b = rng.uniform(0.2, 1, R), rng.uniform(0.2, 1, R)
            for i, s in enumerate(steps):
                if s <= 400:  # alternating shapes: large variation, shrinking with time
                    amp = 1.0 / (1 + s / 200)
                    sv = np.sort(a + amp * (b if i % 2 else -b * 0.1) + 2)[::-1]
                    shapes[(layer, kind)] = sv
                else:  # frozen after step 400 (tiny jitter)
                    sv = shapes[(layer, kind)] * (1 + 1e-7 * rng.standard_normal(R))
                rows.append((s, layer, kind, sv))
    # a logistic loss drop centred at step 200: its decrease rate peaks inside the run (an exponential's
    # peaks at step 0, where smoothing cuts the measured maximum and pushes the knee ~47 steps late) and
    # falls below 10% of the peak at step 425 (4 y / (1 + y)^2 = 0.1 at y = e^x = 19 + sqrt(360))
    width = (425 - 200) / np.log(19 + np.sqrt(360))
    t = np.arange(1, 1001)
    scal = [(int(x), "loss", float(2 + 3 / (1 + np.exp((x - 200) / width)))) for x in t]
    scal += [(int(x), "lr_hidden", 1e-3) for x in t]
    run = _write(tmp_path / "r", rows, scalars=scal)
    table, verdict = sosd(run)
    # frozen from step 400: the variation of the interval (400, 425), indexed at its start, is on the floor
    assert set(table["onset_step"]) == {400} and not verdict["paired"]
    assert verdict["knee_loss"] == "loss" and "no validation loss logged: loss knee on the training loss" in verdict["missing"]
    assert abs(verdict["knee"] - 425) <= 25 and verdict["distance_frac"] <= 0.05  # measured: 431, 0.031
    assert "aligned" in verdict["verdict"]
    spec = run.spectra(probe="weights").set_index(["step", "name"])["values"]
    for r in table.itertuples():  # lr / ||W||_* at the onset
        assert r.bound_at_onset == pytest.approx(1e-3 / np.sum(spec[(400, r.name)]), rel=1e-9)


def _wave_rows(n_layers=8, v=0.02, t0=50.0, width=15.0):
    rows = []
    for s in range(0, 601, 10):
        for layer in range(n_layers):
            cmax = 0.3 + 0.05 * layer
            c = cmax / (1 + np.exp(-(s - t0 - layer / v) / width))
            c0 = cmax / (1 + np.exp(-(0 - t0 - layer / v) / width))
            sr = 8 * (1 - c) / (1 - c0)  # so that compression(t0 = 0) is exactly the planted c relative to step 0
            rows.append((s, layer, "q", _spectrum_with_stable_rank(sr)))
    return rows


def test_compression_wave_with_known_velocity(tmp_path):
    run = _write(tmp_path / "w", _wave_rows())
    table, verdict = compression_waves(run)
    assert verdict["direction"] == "early -> late"
    assert verdict["velocity_layers_per_step"] == pytest.approx(0.02, rel=0.1)  # from the t50 front
    assert verdict["by_kind"]["q"]["velocity"] == verdict["velocity"]  # one kind: pooled = q
    # brute force: the planted compression 1 - sr(t) / sr(0) = 1 - (1 - c) / (1 - c0), its slope over layers per step
    steps, layers = np.arange(0, 601, 10), np.arange(8)
    planted = lambda s: (0.3 + 0.05 * layers) / (1 + np.exp(-(s - 50.0 - layers / 0.02) / 15.0))
    grad = np.array([np.polyfit(layers, 1 - (1 - planted(s)) / (1 - planted(0)), 1)[0] for s in steps])
    np.testing.assert_allclose(table["gradient"], grad, rtol=1e-9, atol=1e-12)
    peak = int(np.argmax(np.abs(grad)))
    flips = np.nonzero(np.sign(grad[peak + 1:]) == -np.sign(grad[peak]))[0]
    assert verdict["gradient_peak"] == pytest.approx(grad[peak]) and grad[peak] < 0  # early layers first
    assert verdict["reversal_step"] == steps[peak + 1 + flips[0]]  # then late ones pass them


def test_depth_profile_inverted_u_and_asymmetry(tmp_path):
    noise = np.random.default_rng(0).standard_normal((8, 2))
    rows = []
    for layer in range(8):
        for j, kind in enumerate(("q", "k")):  # a clear inverted U, peak at layer 4, noise 0.003
            rows.append((100, layer, kind, "alpha_tail", 3 - 0.1 * (layer - 3.8) ** 2 + 0.003 * noise[layer, j]))
        for kind in ("v", "o"):  # a zig-zag: its quadratic fit has zero curvature, whatever the rounding
            rows.append((100, layer, kind, "alpha_tail", 2 + 0.01 * (layer % 2)))
    run = _write(tmp_path / "d", [], rows)
    table, verdict = depth_profiles(run)
    t = table.set_index("kind")
    for kind in ("q", "k"):
        assert t.loc[kind, "shape"] == "inverted U" and t.loc[kind, "inverted_u"] and t.loc[kind, "peak_layer"] == 4
        assert t.loc[kind, "curvature"] == pytest.approx(-0.1, abs=0.005)
        assert t.loc[kind, "curvature_ci_upper"] < -0.09  # the interval is far from 0, not just below it
    for kind in ("v", "o"):  # the interior peak (layer 1) no longer decides: the curvature is not significant
        assert t.loc[kind, "shape"] == "no shape" and not t.loc[kind, "inverted_u"]
        lo, hi = t.loc[kind, "curvature_ci_lower"], t.loc[kind, "curvature_ci_upper"]
        assert lo < -1e-3 and hi > 1e-3  # 0 sits mid-interval (half-width 1.2e-3)
    assert verdict["qk_vo_asymmetry"] > 50 and verdict["inverted_u"] and verdict["shape"] == "inverted U"
    assert verdict["status"] == "ok" and verdict["inverted_u_kinds"] == ["k", "q"]
    assert "inverted U (curvature" in verdict["verdict"]


def _profile(values) -> dict:
    values = np.asarray(values, float)
    return profile_verdict(np.arange(len(values), dtype=float), values)


def test_curvature_ci_is_the_ols_interval():
    layers = np.arange(8.0)
    y = 2 + 0.01 * np.random.default_rng(1).standard_normal(8)
    pv = _profile(y)
    coef, cov = np.polyfit(layers, y, 2, cov=True)  # covariance scaled by RSS / (n - 3)
    half = student_t.ppf(0.975, 8 - 3) * np.sqrt(cov[0, 0])
    assert pv["curvature"] == pytest.approx(coef[0], rel=1e-9)
    assert (pv["curvature_ci_lower"], pv["curvature_ci_upper"]) == pytest.approx((coef[0] - half, coef[0] + half), rel=1e-9)


def test_zero_curvature_profiles_are_no_shape():
    flat = np.full(8, 2.0)
    ulps = flat.copy()
    ulps[[1, 3, 4]] = np.nextafter(2.0, 3.0)  # interior peak by one ulp: the fit's curvature is rounding
    zigzag = 2 + 0.01 * (np.arange(8) % 2)
    cubic = 2 + 0.3 * np.array([-7, 5, 7, 3, -3, -7, -5, 7])  # orthogonal to 1, l, l^2: zero slope and curvature
    for y in (flat, ulps, zigzag, cubic):
        pv = _profile(y)
        assert pv["shape"] == "no shape" and not pv["inverted_u"], y
        assert pv["curvature_ci_lower"] < 0 < pv["curvature_ci_upper"]
        assert abs(pv["curvature"]) < 1e-12


def test_noisy_flat_profile_is_no_shape():
    y = 2 + 0.01 * np.random.default_rng(1).standard_normal(8)  # seed 1: |t| of the curvature 0.6, of the slope 0.2
    pv = _profile(y)
    assert pv["shape"] == "no shape" and not pv["inverted_u"]
    lo, hi = pv["curvature_ci_lower"], pv["curvature_ci_upper"]
    assert abs(pv["curvature"]) < 0.5 * (hi - lo) / 2  # 0 is well inside the interval, not at its edge


def test_profile_shapes_and_too_few_layers(tmp_path):
    layers = np.arange(8.0)
    assert _profile(1 + 0.1 * (layers - 3.5) ** 2)["shape"] == "U"
    assert _profile(2 + 0.1 * layers)["shape"] == "monotone"
    assert _profile(3 - 0.1 * (layers - 9) ** 2)["shape"] == "monotone"  # concave, but the peak is past the last layer
    run = _write(tmp_path / "few", [], [(10, layer, "q", "alpha_tail", [1.0, 2.0, 1.5][layer]) for layer in range(3)])
    table, verdict = depth_profiles(run)
    assert table.loc[0, "shape"] == "too few layers" and np.isnan(table.loc[0, "curvature"])
    assert verdict["status"] == "too few layers" and not verdict["inverted_u"] and np.isnan(verdict["curvature_ci_upper"])
    assert not verdict["applies"] and verdict["missing"][0] == "only 3 layers: a depth profile of alpha_tail needs >= 4"
    assert verdict["verdict"].startswith(verdict["missing"][0])


def test_depth_scaling_fit(tmp_path):
    runs = []
    for depth in (4, 8, 12):
        amp = 0.5 * depth ** 0.26
        rows = [(10, layer, "q", "alpha_tail", 2 + amp * layer / (depth - 1)) for layer in range(depth)]
        runs.append(_write(tmp_path / f"L{depth}", [], rows))
    table, verdict = depth_scaling(runs)
    assert verdict["beta"] == pytest.approx(0.26, abs=1e-6) and verdict["r2"] == pytest.approx(1.0)
    assert depth_scaling(runs[:1])[1]["beta"] is None


def test_pruning_rules_and_verdict():
    alpha = pd.Series([5.0, 1.0, 3.0, 2.0], index=[0, 1, 2, 3])
    assert spectral_order(alpha, "alpha_tail") == [1, 3, 2]  # rank-decay: lowest first, block 0 kept
    assert spectral_order(alpha, "alpha_mle") == [2, 3, 1]  # ESD: highest first
    assert rule_choice("last_n", 4, 2) == [2, 3] and rule_choice("spectral", 4, 2, alpha) == [1, 3]
    assert len(set(rule_choice("random", 4, 3, seed=1))) == 3
    comp = pd.DataFrame({"k": [2, 2, 2, 2], "rule": ["spectral", "last_n", "random", "random"], "delta_ppl": [1.0, 3.0, 2.0, 4.0]})
    v = pruning_verdict(comp)
    assert v["last_n_over_spectral"] == 3.0 and v["delta_ppl_random"] == 3.0 and "spectral hurts less" in v["verdict"]


def test_findings_text_and_json(tmp_path, capsys):
    run = _write(tmp_path / "f", _wave_rows(n_layers=4), scalars=[(s, "loss", 3 - s / 1000) for s in range(1, 601)])
    items = findings(run)
    # every analysis is listed; the ones this run's data does not allow say what it lacks
    assert [f.name for f in items] == ["sosd", "compression_waves", "depth_profile", "spectral_edge", "pruning"]
    assert [f.applies for f in items] == [True, True, False, False, False]
    by = {f.name: f.verdict["verdict"] for f in items}
    assert by["spectral_edge"].startswith("no trajectory measurements in this run")
    assert by["pruning"].startswith("not measured: `specscope prune RUN`")  # q blocks: prunable, but never pruned
    assert "no alpha_tail of hidden matrices" in by["depth_profile"]
    doc = json.loads(to_json(items))
    assert doc[1]["verdict"]["direction"] == "early -> late"
    assert "Compression waves across depth" in to_text(items)
    from specscope.cli import main

    assert main(["findings", str(tmp_path / "f"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "sosd"
    assert main(["findings", str(tmp_path / "nope")]) == 2


def test_block_skipping_is_the_identity_and_importance(tmp_path):
    from specscope.experiments.pruning import block_importance, pruning_study, skipped
    from specscope.train import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, seq_len=12, n_layer=4, n_head=2, d_model=16)).eval()
    x = torch.randint(0, 32, (6, 12))
    seen = {}
    model.blocks[2].register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    with skipped(model, [1]), torch.no_grad():
        logits, _ = model(x)
        h = model._embed(x)
        for i in (0, 2, 3):
            h = model.blocks[i](h)
        torch.testing.assert_close(logits, model.lm_head(model.ln_f(h)))

    def loss_without(skip) -> float:  # brute force: the blocks applied by hand, mean next-token cross-entropy
        with torch.no_grad():
            h = model._embed(x)
            for i, block in enumerate(model.blocks):
                h = h if i in skip else block(h)
            logits = model.lm_head(model.ln_f(h))[:, :-1]
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, 32), x[:, 1:].reshape(-1)))

    base = loss_without(())
    imp = block_importance(model, x, batch=4)
    assert list(imp["layer"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(imp["delta_loss"], [loss_without({i}) - base for i in range(4)], rtol=1e-4, atol=1e-6)
    importance, comparison, verdict = pruning_study(model, x, ks=[1, 2], random_seeds=2)
    assert set(comparison["rule"]) == {"spectral", "last_n", "random"} and "alpha_tail" in importance
    np.testing.assert_allclose(comparison["loss"], [loss_without(set(ls)) for ls in comparison["layers"]], rtol=1e-5)
    base_ppl = np.exp(importance["base_loss"].iloc[0])
    np.testing.assert_allclose(comparison["delta_ppl"], np.exp(comparison["loss"]) - base_ppl, rtol=1e-9)
    assert comparison.query("rule == 'last_n'")["layers"].tolist() == [[3], [2, 3]]
    assert "Last-N / spectral" in verdict["verdict"]


HF_TINY = {
    "gpt2": lambda t: t.GPT2LMHeadModel(t.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=3, n_head=2)),
    "neox": lambda t: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                                             num_attention_heads=2, intermediate_size=64,
                                                             max_position_embeddings=16)),
    "llama": lambda t: t.LlamaForCausalLM(t.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                                        num_attention_heads=2, intermediate_size=64,
                                                        max_position_embeddings=16)),
}


@pytest.mark.parametrize("family", sorted(HF_TINY))
def test_block_skipping_on_hf_models(family):
    transformers = pytest.importorskip("transformers")
    from specscope.measure import find_blocks
    from specscope.experiments.pruning import heldout_loss, skipped

    torch.manual_seed(0)
    model = HF_TINY[family](transformers).eval()
    x = torch.randint(0, 64, (4, 16))
    seen = {}
    blk = find_blocks(model)[1]
    base = heldout_loss(model, x)
    with skipped(model, [1]):
        h = blk.register_forward_hook(lambda m, a, kw, o: seen.update(inp=a[0] if a else kw["hidden_states"], out=o),
                                      with_kwargs=True)  # runs after the skip hook: sees what the block passes on
        skip = heldout_loss(model, x)
        h.remove()
    out = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    torch.testing.assert_close(out, seen["inp"])
    assert skip != base
