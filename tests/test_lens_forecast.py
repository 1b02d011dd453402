"""Token efficiency, alignment, the early forecast and the taxonomy on synthetic run stores with planted answers."""
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import spearmanr

import specscope as ss
from specscope.analysis.lens import align, efficiency, forecast, forecast_windows, label, rho_vs_budget, taxonomy, tokens_to_target
from specscope.store.writer import RunWriter

BATCHES = [1, 2, 4, 8, 16]
EPS = [1.3, 1.0, 1.1, 1.5, 2.2]  # planted: B = 2 reaches the target in the fewest tokens
T_MIN = 40_000
TARGET = 2.5
EVAL_EVERY = 2_000  # tokens between evaluations; every planted T is a multiple of it


WIDTH = 128  # the activation width of the planted runs: the tail window chosen by width is 40:90


def planted_spectrum(slopes: dict, width: int = WIDTH) -> np.ndarray:
    """Eigenvalues whose log is piecewise linear in log rank with the given slope magnitude on each bank window
    (``slopes``: window -> exponent, windows contiguous from rank 10; rank-decay exponent 1 before): the rank-decay
    fit over each window then returns its planted exponent exactly."""
    j = np.arange(1, width + 1, dtype=float)
    logp = np.zeros(width)
    for (a, b), alpha in sorted(slopes.items()):
        inside = j > a
        logp[inside] -= alpha * (np.log(np.minimum(j[inside], b)) - np.log(a))
    logp[j <= 10] = -1.0 * (np.log(j[j <= 10]) - np.log(10))
    return np.exp(logp)


def _run(path, batch, T, alpha, tok_per_s=1000.0, family="gpt", grad=None, head=None, shallow=1.0, deep=1.0, tokens_max=200_000):
    """Validation loss 2 + 3 exp(-tokens / tau), tau set so it crosses TARGET half-way between the evaluations
    before T and at T (so the first evaluation at or below TARGET is T, not a float tie at the crossing itself);
    the deepest activation spectrum planted with rank-decay exponent ``shallow`` over 10:40, ``alpha`` (+ 0.001 per
    measurement) over 40:90 (the window chosen by width 128) and ``deep`` over 90:128; the stored ``alpha_tail``
    metric likewise."""
    tau = (T - EVAL_EVERY / 2) / np.log(3 / (TARGET - 2))
    w = RunWriter(path, run_id=path.name, config={"family": family, "train": {"micro_batch": batch, "grad_accum": 1}})
    w.write_meta(summary={"tokens_per_s": tok_per_s})
    for i in range(0, tokens_max // EVAL_EVERY + 1):
        tokens = i * EVAL_EVERY
        w.add("scalars", {"step": i, "tokens": tokens, "name": "val_loss", "value": 2 + 3 * np.exp(-tokens / tau), "wall_time": 0.0})
        for metric, value in (("alpha_tail", alpha + 0.001 * i), ("alpha_head", head if head is not None else 0.5)):
            w.add("metrics", {"step": i, "tokens": tokens, "probe": "activations", "layer": 3, "kind": "resid", "name": "blocks.3",
                              "metric": metric, "value": value, "status": "ok"})
        eig = planted_spectrum({(10, 40): shallow, (40, 90): alpha + 0.001 * i, (90, WIDTH): deep})
        w.add("spectra", {"step": i, "tokens": tokens, "probe": "activations", "layer": 3, "kind": "resid", "name": "blocks.3",
                          "quantity": "eig", "values": list(eig), "status": "ok"})
        if grad is not None:
            w.add("spectra", {"step": i, "tokens": tokens, "probe": "gradients", "layer": 3, "kind": "o", "name": "o",
                              "quantity": "sv", "values": list(grad), "status": "ok"})
            lam = np.asarray(grad) ** 2
            p = lam / lam.sum()
            w.add("metrics", {"step": i, "tokens": tokens, "probe": "gradients", "layer": 3, "kind": "o", "name": "o",
                              "metric": "rankme", "value": float(np.exp(-(p * np.log(p)).sum())), "status": "ok"})
    w.close()
    return ss.open_run(path)


SHALLOW = [2.0 - 0.3 * e for e in EPS]  # planted anti-predictive over 10:40: rho = -1
DEEP = [1.0, 1.2, 1.1, 1.4, 1.3]  # planted over 90:128, in batch order


@pytest.fixture
def family(tmp_path):
    return [_run(tmp_path / f"B{b}", b, e * T_MIN, 0.5 + 0.3 * e, shallow=sh, deep=dp)
            for b, e, sh, dp in zip(BATCHES, EPS, SHALLOW, DEEP)]


def test_tokens_to_target_and_efficiency(family):
    assert tokens_to_target(family[1], TARGET) == T_MIN  # the first evaluation at or below
    assert tokens_to_target(family[0], 1.0) is None
    eff = efficiency(family, TARGET)
    np.testing.assert_allclose(eff["eps_tok"], EPS, rtol=1e-12)
    assert not eff["censored"].any()


def test_alignment(family):
    at_loss = align(family, loss=TARGET)
    assert list(at_loss["tokens"] / T_MIN) == pytest.approx(EPS, rel=1e-12)
    at_tokens = align(family, tokens=41_500)
    assert set(at_tokens["tokens"]) == {42_000.0}
    assert set(align(family, fraction=0.5)["step"]) == {50}
    with pytest.raises(ValueError):
        align(family, loss=1.0, tokens=5)


def test_align_miss_is_none_and_the_taxonomy_falls_back_to_the_last_step(tmp_path):
    a = _run(tmp_path / "a", 8, 50_000, 1.0, head=0.50)
    b = _run(tmp_path / "b", 8, 40_000, 1.0, head=0.80)
    missed = align([a, b], loss=1.0)  # planted losses never go below 2
    assert missed["step"].tolist() == [None, None] and missed["tokens"].tolist() == [None, None]
    hit = align([a, b], loss=TARGET)
    assert hit["step"].tolist() == [25, 20] and all(isinstance(x, int) for x in hit["step"])
    t = taxonomy([a, b], target=1.0, names=["a", "b"])  # neither reaches it: compared at their last steps
    assert t["d_alpha_head"].iloc[0] == pytest.approx(0.3, abs=1e-12)  # alpha_head planted 0.5 -> 0.8
    assert t["d_alpha_tail"].iloc[0] == pytest.approx(0.0, abs=1e-12)  # both 1 + 0.001 * 100 at the last step
    assert t["label"].iloc[0] == "unscored" and t["T_a"].iloc[0] is None


def test_forecast_ranks_the_planted_best_batch_first(family):
    table, verdict = forecast(family, target=TARGET)
    assert table["batch"].tolist()[0] == 2 and verdict["predicted_best_batch"] == {"gpt": 2} and verdict["best_batch"] == {"gpt": 2}
    assert verdict["rho_within_family"] == pytest.approx(1.0) and verdict["rho_pooled"] == pytest.approx(1.0)
    assert table["budget"].iloc[0] == pytest.approx(0.2 * np.median([e * T_MIN for e in EPS]), rel=1e-12)
    early, _ = forecast(family, budget=10_000)  # runs only trained to an early budget: a ranking, no rho needed
    assert early["batch"].tolist() == [2, 4, 1, 8, 16]


def test_forecast_reports_rho_over_every_bank_window(family):
    table, v = forecast(family, target=TARGET)
    assert v["window"] == "40:90" and v["window_by"] == "width 128" and set(table["window"]) == {"40:90"}
    assert list(v["rho_by_window"]) == ["10:40", "40:90", "90:128"]
    assert v["rho_by_window"]["10:40"] == pytest.approx(-1.0)  # planted anti-predictive
    assert v["rho_by_window"]["40:90"] == pytest.approx(1.0) == v["rho_within_family"]
    assert v["rho_by_window"]["90:128"] == pytest.approx(spearmanr(DEEP, EPS)[0])
    t = table.set_index("batch").loc[BATCHES]
    np.testing.assert_allclose(t["alpha[10:40]"], SHALLOW, rtol=1e-9)  # the planted exponents, recomputed from spectra
    np.testing.assert_allclose(t["alpha[90:128]"], DEEP, rtol=1e-9)
    step = np.ceil(t["budget"] / EVAL_EVERY)  # the first measurement at or past the budget
    np.testing.assert_allclose(t["early_alpha"], [0.5 + 0.3 * e for e in EPS] + 0.001 * step, rtol=1e-9)
    given, g = forecast(family, target=TARGET, window=(10, 40))
    assert g["window"] == "10:40" and g["window_by"] == "given" and g["rho_within_family"] == pytest.approx(-1.0)
    assert g["predicted_best_batch"] == {"gpt": 16} and "tail window 10:40, given" in g["verdict"]
    curve = rho_vs_budget(family, TARGET, T_MIN, fracs=(0.2, 1.0))
    assert list(curve.columns) == ["budget_frac", "budget_tokens", "rho", "rho[10:40]", "rho[40:90]", "rho[90:128]"]
    assert curve["rho[10:40]"].tolist() == pytest.approx([-1.0, -1.0]) and curve["rho"].tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("width, window", [(128, (40, 90)), (768, (100, 200)), (1280, (200, 400)), (1600, (400, 800)),
                                           (32, (10, 32))])
def test_tail_window_is_chosen_by_width(width, window):
    chosen, bank = forecast_windows(width)
    assert chosen == window and chosen in bank
    assert forecast_windows(width, (10, 40))[0] == (10, 40)


def test_a_censored_target_is_reported_as_censored(family, tmp_path):
    slow = _run(tmp_path / "B32", 32, 300_000, 0.5 + 0.3 * 7.5)  # crosses the target after its 200,000 tokens
    runs = [*family, slow]
    table, v = forecast(runs, target=TARGET)
    row = table.set_index("batch").loc[32]
    assert bool(row["censored"]) and np.isnan(row["T"]) and np.isnan(row["eps_tok"])  # no made-up T
    assert not table.set_index("batch").loc[BATCHES, "censored"].any()
    assert v["censored"] == 1 and v["censored_runs"] == ["B32"] and v["n_scored"] == 5 and v["n_runs"] == 6
    assert v["rho_within_family"] == pytest.approx(1.0)  # over the five uncensored runs
    assert "rho over 5 uncensored run(s) of 6, 1 censored (never reached the target" in v["verdict"]
    default, d = forecast(runs)  # the default target: the loosest loss every run reached
    assert d["target"] == pytest.approx(float(slow.scalars()["val_loss"].min())) and d["censored"] == 0
    assert not default["censored"].any() and default["T"].notna().all()


def test_taxonomy_labels(tmp_path):
    g1 = np.linspace(1, 0.1, 16)
    g2 = np.linspace(1, 0.01, 16) ** 3  # a different gradient spectrum
    a = _run(tmp_path / "base", 8, 50_000, 1.0, 1000.0, grad=g1, head=0.50)
    b = _run(tmp_path / "rope", 8, 40_000, 1.0, 1000.0, grad=g1, head=0.80)  # token gain, activation moved
    c = _run(tmp_path / "win", 8, 32_000, 1.0, 1000.0, grad=g2, head=0.80)  # token gain, gradient moved
    d = _run(tmp_path / "fast", 8, 32_000, 1.0, 1500.0, grad=g2, head=0.80)  # throughput only
    e = _run(tmp_path / "slow", 8, 26_000, 1.0, 1000.0, grad=g2, head=0.80)  # more tokens-efficient, slower
    t = taxonomy([a, b, c, d, e], TARGET, names=["base", "rope", "win", "fast", "slow"])
    assert t["label"].tolist() == ["activation-led", "gradient-led", "throughput-leaning", "mixed / trade-off"]
    assert t["tok_gain"].tolist() == pytest.approx([0.25, 0.25, 0.0, 32 / 26 - 1]) and t["thr_gain"].iloc[2] == pytest.approx(0.5)
    # displacements at matched loss: alpha_head planted 0.5 -> 0.8 on base -> rope, the gradient spectrum g1 -> g2 on
    # rope -> win; alpha_tail = 1 + 0.001 step, each run taken at its step T / EVAL_EVERY (25, 20, 16, 16, 13)
    p1, p2 = g1 ** 2 / (g1 ** 2).sum(), g2 ** 2 / (g2 ** 2).sum()
    js = jensenshannon(p1, p2) ** 2  # scipy: the square root of the JS divergence, natural log
    rankme = lambda p: np.exp(-(p * np.log(p)).sum())
    d_rankme = rankme(p2) / rankme(p1) - 1
    assert t["d_alpha_head"].tolist() == pytest.approx([0.3, 0.0, 0.0, 0.0], abs=1e-12)
    assert t["d_alpha_tail"].tolist() == pytest.approx([-0.005, -0.004, 0.0, -0.003], abs=1e-12)
    assert t["grad_js"].tolist() == pytest.approx([0.0, js, 0.0, 0.0], abs=1e-12) and js > 0.05
    assert t["d_grad_rankme"].tolist() == pytest.approx([0.0, d_rankme, 0.0, 0.0], abs=1e-12)
    assert t["act_shift"].tolist() == pytest.approx([6.0, 0.0, 0.0, 0.0], abs=1e-9)  # |0.3| / act_scale 0.05
    assert t["grad_shift"].tolist() == pytest.approx([0.0, max(js / 0.01, abs(d_rankme) / 0.1), 0.0, 0.0], abs=1e-9)
    assert t["spectral_lean"].tolist() == ["activation", "gradient", "activation", "activation"]
    # both gains well inside gain_eps = 2% (0.5% and 0.2%), not at the cut
    assert label(0.0, 0.0, 0.0, 0.0) == label(0.005, -0.002, 5.0, 0.0) == "no measurable gain"
    assert label(0.03, 0.0, 0.0, 0.0) == "activation-led"


def test_forecast_and_taxonomy_commands(family, tmp_path, capsys):
    from specscope.cli import main

    assert main(["forecast", *[str(r.dir) for r in family], "--target", str(TARGET)]) == 0
    out = capsys.readouterr().out
    assert "predicted most token-efficient batch: B=2" in out and "rho vs eps_tok within family = 1.00" in out
    assert main(["forecast", str(tmp_path), "--budget", "10000", "--json"]) == 0  # a root holding the runs
    capsys.readouterr()
    assert main(["forecast", str(tmp_path), "--window", "10:40"]) == 0  # default target: the loosest every run reached
    out = capsys.readouterr().out
    assert "tail window 10:40, given" in out and "rho within family by tail window: 10:40: -1.00, 40:90: 1.00" in out
    assert main(["forecast", str(tmp_path), "--window", "40:10"]) == 2
    fig = tmp_path / "tax.png"
    assert main(["taxonomy", str(family[0].dir), str(family[1].dir), "--target", str(TARGET), "--figure", str(fig)]) == 0
    assert "B1 -> B2" in capsys.readouterr().out and fig.stat().st_size > 0
    assert main(["taxonomy", str(family[0].dir), str(family[1].dir), "--report", str(tmp_path / "tax.html")]) == 0
    assert "each transition at the loosest loss both runs reached" in capsys.readouterr().out
    html = (tmp_path / "tax.html").read_text()
    assert "Transitions" in html and "B1 -&gt; B2" in html and "<svg" in html
    assert main(["forecast", *[str(r.dir) for r in family], "--target", str(TARGET), "--report", str(tmp_path / "f.html")]) == 0
    html = (tmp_path / "f.html").read_text()
    assert "predicted most token-efficient batch: B=2" in html and "rho vs the early budget" in html
    assert main(["forecast", *[str(r.dir) for r in family], "--budget", "1000", "--report", str(tmp_path / "g.html")]) == 0


def test_common_target_is_the_loosest_loss_every_run_reached(family):
    from specscope.analysis.lens import common_target

    best = [float(r.scalars()["val_loss"].min()) for r in family]
    assert common_target(family) == pytest.approx(max(best)) and all(tokens_to_target(r, common_target(family)) for r in family)


def _evals(run) -> pd.DataFrame:
    return run.scalars().dropna(subset=["val_loss"]).sort_values("step")


def _first_at_or_below(run, loss: float) -> pd.Series:
    """The first evaluation with validation loss <= ``loss`` (step, tokens, val_loss)."""
    ev = _evals(run)
    return ev[ev["val_loss"] <= loss].iloc[0]


def _deepest(run, probe: str, metric: str, step: float = np.inf, tokens: float = -np.inf) -> float:
    """``metric`` of the deepest probed layer: the last measurement at or before ``step``, or the first at >= ``tokens``."""
    m = run.metrics(probe=probe, metric=metric)
    m = m[m["layer"] == m["layer"].max()]
    if np.isfinite(step):
        return float(m[m["step"] <= step].sort_values("step")["value"].iloc[-1])
    return float(m[m["tokens"] >= tokens].sort_values("tokens")["value"].iloc[0])


@pytest.mark.smoke
def test_smoke_lens_experiment_quick(tmp_path, capsys):
    from specscope.cli import main

    assert main(["experiment", "lens", "--family", "stdlib", "--quick", "--out", str(tmp_path / "lens"), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "lens" / "lens.csv").set_index("batch")
    assert (table["seed"] == 0).all() and (table["window"] == "10:32").all()  # width 32: the toy bank's first window, clipped
    assert sorted(table.index) == [1, 2, 4]
    assert table["lr"].tolist() == pytest.approx([3e-3 * np.sqrt(b / 2) for b in (1, 2, 4)])  # the square-root rule
    # the numbers of 12k-token runs have no known answer: recompute them from the run stores
    runs = {b: ss.open_run(tmp_path / "lens" / "seed0" / "trials" / f"B{b}") for b in (1, 2, 4)}
    target = max(float(_evals(r)["val_loss"].min()) for r in runs.values())  # the loosest loss every tier reached
    T = pd.Series({b: float(_first_at_or_below(r, target)["tokens"]) for b, r in runs.items()})
    assert table["T"].to_dict() == pytest.approx(T.to_dict()) and table["eps_tok"].to_dict() == pytest.approx((T / T.min()).to_dict())
    budget = 0.2 * T.median()
    assert table["budget"].to_numpy() == pytest.approx([budget] * 3)
    early = pd.Series({b: _deepest(r, "activations", "alpha_tail", tokens=budget) for b, r in runs.items()})  # stored, same window
    assert table["early_alpha"].to_dict() == pytest.approx(early.to_dict(), rel=1e-12)
    rho = pd.read_csv(tmp_path / "lens" / "rho_vs_budget.csv")
    assert rho["budget_frac"].tolist() == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0])
    at = rho.set_index("budget_frac")["rho"].loc[0.2]
    assert at == pytest.approx(spearmanr(early, T / T.min())[0], nan_ok=True)
    out = capsys.readouterr().out
    assert f"predicted most token-efficient batch: B={early.idxmin()}" in out and "rho vs early budget" in out
    assert (tmp_path / "lens" / "lens.png").exists() and "Forecast" in (tmp_path / "lens" / "report.html").read_text()
    assert set(runs[4].spectra()["probe"]) >= {"activations", "gradients", "weights"}
    assert sorted(runs[4].scalars().dropna(subset=["val_loss"])["tokens"])[:3] == [0, 1024, 2048]  # every 1,000 tokens, per tier


def test_lens_experiment_with_a_sweep(tmp_path):
    from specscope.experiments.lens import LensExperiment, run_lens

    cfg = LensExperiment.quick()
    cfg.batches, cfg.tokens, cfg.sweep, cfg.executor, cfg.multipliers, cfg.rung_fracs = (1, 2), 6_000, True, "local", (1.0, 2.0), (0.5,)
    res = run_lens(cfg, tmp_path / "lens", progress=False)
    sweep = res.extra["sweep"]
    assert sorted(sweep["tokens"].unique()) == [3_000, 6_000]
    winners = sweep[(sweep["rung"] == 1) & sweep["promoted"]]
    assert sorted(winners["batch"]) == [1, 2] and len(res.table) == 2
    assert sorted(res.table["lr"]) == pytest.approx(sorted(winners["lr"]))  # the tiers analysed are the sweep's winners


@pytest.mark.smoke
def test_smoke_taxonomy_experiment_quick(tmp_path, capsys):
    from specscope.cli import main

    out = tmp_path / "tax"
    assert main(["experiment", "taxonomy", "--quick", "--chain", "baseline,rope,untied", "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out / "taxonomy.csv")
    assert table["transition"].tolist() == ["baseline -> rope", "rope -> untied"]
    chain = [ss.open_run(out / "trials" / f"{s}-seed0") for s in ("baseline", "rope", "untied")]
    assert [(r.config["model"]["positions"], r.config["model"]["tied"]) for r in chain] == [
        ("learned", True), ("rope", True), ("rope", False)]  # cumulative
    # the numbers of 8k-token runs have no known answer: each transition recomputed from the two run stores
    for row, a, b in zip(table.itertuples(), chain, chain[1:]):
        target = max(float(_evals(r)["val_loss"].min()) for r in (a, b))  # the loosest loss both reached
        ea, eb = _first_at_or_below(a, target), _first_at_or_below(b, target)
        qa, qb = (r.meta["summary"]["tokens_per_s"] for r in (a, b))
        tok, thr = ea["tokens"] / eb["tokens"] - 1, qb / qa - 1
        d_head = _deepest(b, "activations", "alpha_head", eb["step"]) - _deepest(a, "activations", "alpha_head", ea["step"])
        grad = [np.asarray(r.spectra(probe="gradients").query("step <= @e.step").sort_values("step")["values"].iloc[-1]) ** 2
                for r, e in ((a, ea), (b, eb))]
        assert all(r.spectra(probe="gradients")["step"].is_unique for r in (a, b))  # one gradient spectrum a step
        js = jensenshannon(grad[0] / grad[0].sum(), grad[1] / grad[1].sum()) ** 2
        ra, rb = (_deepest(r, "gradients", "rankme", e["step"]) for r, e in ((a, ea), (b, eb)))
        act, shift = abs(d_head) / 0.05, max(js / 0.01, abs(rb / ra - 1) / 0.1)
        assert (row.target, row.T_a, row.T_b) == pytest.approx((target, ea["tokens"], eb["tokens"]))
        assert (row.tok_gain, row.thr_gain, row.d_alpha_head) == pytest.approx((tok, thr, d_head), rel=1e-9, abs=1e-12)
        assert (row.grad_js, row.d_grad_rankme, row.act_shift, row.grad_shift) == pytest.approx(
            (js, rb / ra - 1, act, shift), rel=1e-6, abs=1e-12)
        assert row.label == label(tok, thr, act, shift) and row.spectral_lean == ("activation" if act >= shift else "gradient")
    text = capsys.readouterr().out
    assert "section 4 lists RoPE" in text and (out / "taxonomy.png").exists() and "Transitions" in (out / "report.html").read_text()
    summary = pd.read_csv(out / "taxonomy_summary.csv")  # one seed: the labels are the seed's own
    assert summary["label"].tolist() == table["label"].tolist() and (summary["seeds"] == 1).all()
    claims = pd.read_csv(out / "claims.csv")
    assert claims["claim"].tolist() == ["label of baseline -> rope", "token gain T(a)/T(b) - 1 of baseline -> rope > 0"]
    assert claims["verdict"].iloc[1] == "not significant"  # one seed: no interval
    assert main(["experiment", "taxonomy", "--quick", "--chain", "baseline,warp", "--out", str(tmp_path / "bad")]) == 2
