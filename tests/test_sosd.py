"""SoSD (SPEC 5.1) on synthetic runs with planted answers: the onset rule on a decay onto a noise floor, the
learning-rate normalization, paired measurements and their fallback, the validation-loss knee."""
import numpy as np
import pytest
import torch
from torch import nn

import specscope as ss
from conftest import write_weights_run
from specscope.analysis.coverage import RunContents
from specscope.analysis.sosd import SosdRule, loss_knee, onset_step, sosd, variation_series
from specscope.probes import every, paired

R, STEPS, EVERY = 8, 1000, 10
PEAK, FLOOR, T_PEAK, TAU = 5.0, 1.0, 100, 60.0  # the floor is 20% of the peak
# the deterministic shape enters [FLOOR / 2, 2 FLOOR] where (PEAK - FLOOR) exp(-x / TAU) = FLOOR
PLANTED = T_PEAK + TAU * np.log((PEAK - FLOOR) / FLOOR)  # step 183


def _shape(t: np.ndarray) -> np.ndarray:
    """The planted LR-normalized SD variation: a rise to PEAK at T_PEAK, an exponential decay onto FLOOR."""
    return np.where(t < T_PEAK, PEAK * (t + 1) / (T_PEAK + 1), FLOOR + (PEAK - FLOOR) * np.exp(-(t - T_PEAK) / TAU))


def _wsd(t: np.ndarray, lr: float = 1e-3) -> np.ndarray:
    """Warm-up over 50 steps, constant, linear decay to 10% over the last 20%: the rate applied at step t + 1."""
    t = np.asarray(t, float)
    up = lr * np.minimum(1.0, (t + 1) / 50)
    return np.where(t >= 0.8 * STEPS, lr * (1 - 0.9 * (t - 0.8 * STEPS) / (0.2 * STEPS)), up)


def _planted_run(path, lr_fn, norm_fn, pairs: bool = True, noise: float = 0.25, seed: int = 0, scalars=()):
    """Two matrices whose singular distribution moves by ``_shape(t) * lr(t) / ||W_t||_*`` (times log-normal noise)
    from step t to t + 1 in a random zero-sum direction; weights measured every EVERY steps (and at t + 1 with
    ``pairs``); ``lr_hidden`` logged at every step (the rate of the update that produced that step's weights)."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS + 1)
    due = paired(every(EVERY)) if pairs else every(EVERY)
    rows = []
    for layer in range(2):
        sd = np.linspace(2.0, 1.0, R)
        sd /= sd.sum()
        for step in t:
            if due(int(step)):
                rows.append((int(step), layer, "q", sd * norm_fn(step)))
            u = rng.standard_normal(R)
            u -= u.mean()
            u /= np.linalg.norm(u)
            size = _shape(step) * lr_fn(step) / norm_fn(step) * np.exp(noise * rng.standard_normal())
            sd = sd + size * u
    scal = [(int(s) + 1, "lr_hidden", float(lr_fn(s))) for s in t[:-1]] + list(scalars)
    return write_weights_run(path, rows, scalars=scal)


def _old_rule(steps, sdv, theta=0.05):
    """The rule this analysis replaced: the first step after the peak from which the variation stays below
    ``theta`` of the peak (None if never)."""
    ok = np.isfinite(sdv)
    steps, sdv = np.asarray(steps)[ok], np.asarray(sdv)[ok]
    peak = int(np.argmax(sdv))
    below = sdv < theta * sdv[peak]
    i = len(sdv)
    while i > peak + 1 and below[i - 1]:
        i -= 1
    return int(steps[i]) if i < len(sdv) else None


def test_onset_on_a_noise_floor_at_a_fifth_of_the_peak(tmp_path):
    run = _planted_run(tmp_path / "r", lambda s: 1e-3, lambda s: 10.0)
    table, verdict = sosd(run)
    assert table["paired"].all() and verdict["paired"] and len(table) == 2
    for on in table["onset_step"]:
        assert abs(on - PLANTED) <= 0.05 * STEPS
    assert abs(verdict["onset_median"] - PLANTED) <= 0.05 * STEPS
    # the paired samples are the planted per-step variation: constant lr and norm, so sd_variation_lr = shape * noise
    series = variation_series(run)
    g = series[series["layer"] == 0]
    assert (g["step"] % EVERY == 0).all() and len(g) == STEPS // EVERY  # one sample per pair, indexed at t
    ratio = g["sd_variation_lr"].to_numpy() / _shape(g["step"].to_numpy())
    assert np.exp(np.abs(np.log(ratio))).max() < np.exp(4 * 0.25)  # within 4 sigma of the planted noise
    assert table["floor_lr"].to_numpy() == pytest.approx([FLOOR, FLOOR], rel=0.15)
    # the old rule (below 5% of the peak for good) never fires on a floor at 20% of the peak
    for _, g in series.groupby("layer"):
        assert _old_rule(g["step"].to_numpy(), g["sd_variation"].to_numpy()) is None
    # the bound lr / ||W||_* per matrix: 1e-3 / 10 throughout
    assert table["bound_at_onset"].to_numpy() == pytest.approx([1e-4, 1e-4], rel=1e-6)
    assert verdict["knee"] is None and "no validation loss logged and no training losses: no loss knee" in verdict["missing"]


def test_onset_reads_the_lr_normalized_variation(tmp_path):
    # WSD decay over the last 20% and a nuclear norm growing 10 -> 30: the raw variation keeps falling to the end
    grow = lambda s: 10.0 + 20.0 * s / STEPS
    run = _planted_run(tmp_path / "r", _wsd, grow)
    table, verdict = sosd(run)
    assert abs(verdict["onset_median"] - PLANTED) <= 0.05 * STEPS
    series = variation_series(run)
    raw = [onset_step(g["step"].to_numpy(), g["sd_variation"].to_numpy()) for _, g in series.groupby("layer")]
    assert all(r is None or r - PLANTED > 0.3 * STEPS for r in raw)  # the raw variation settles only in the decay
    # sd_variation_lr = sd_variation * ||W_t||_* / lr: the stored nuclear norm is the planted one
    g = series[series["layer"] == 1]
    assert g["nuclear_norm"].to_numpy() == pytest.approx(grow(g["step"].to_numpy()), rel=1e-9)
    assert g["sd_variation_lr"].to_numpy() == pytest.approx((g["sd_variation"] * g["nuclear_norm"] / g["lr"]).to_numpy())
    last = table.iloc[0]
    assert last["bound_final"] == pytest.approx(_wsd(990) / grow(990), rel=1e-6)  # the last pair: (990, 991)


def test_without_pairs_the_variation_is_divided_by_the_gap_and_said(tmp_path):
    run = _planted_run(tmp_path / "r", lambda s: 1e-3, lambda s: 10.0, pairs=False)
    table, verdict = sosd(run)
    assert not verdict["paired"] and not table["paired"].any()
    assert any(m.startswith("no paired measurements (t, t+1) for 2 of 2 matrices") for m in verdict["missing"])
    assert "Weights(paired=True)" in verdict["verdict"]
    s = variation_series(run)
    assert (np.diff(s[s["layer"] == 0]["step"]) == EVERY).all()  # every interval, not only pairs


def test_knee_on_the_validation_loss_over_the_training_loss(tmp_path):
    t = np.arange(1, STEPS + 1)
    # training loss: knee near step 150; validation loss (every 10 steps): knee near step 425 (logistic drops)
    def logistic(x, centre, knee):
        width = (knee - centre) / np.log(19 + np.sqrt(360))  # rate falls to 10% of its peak at `knee`
        return 2 + 3 / (1 + np.exp((x - centre) / width))
    scal = [(int(x), "loss", float(logistic(x, 60, 150))) for x in t]
    scal += [(int(x), "val_loss", float(logistic(x, 200, 425))) for x in t[9::10]]
    run = _planted_run(tmp_path / "r", lambda s: 1e-3, lambda s: 10.0, scalars=scal)
    _, verdict = sosd(run)
    assert verdict["knee_loss"] == "val_loss" and abs(verdict["knee"] - 425) <= 25
    assert "validation loss" in verdict["verdict"] and not any("training loss" in m for m in verdict["missing"])
    assert verdict["distance_frac"] == pytest.approx(abs(verdict["onset_median"] - verdict["knee"]) / STEPS)
    # without validation losses: the training loss, and said so
    run2 = _planted_run(tmp_path / "r2", lambda s: 1e-3, lambda s: 10.0, scalars=scal[:STEPS])
    _, v2 = sosd(run2)
    assert v2["knee_loss"] == "loss" and abs(v2["knee"] - 150) <= 15
    assert "no validation loss logged: loss knee on the training loss" in v2["missing"]


def test_loss_for_knee_sentences():
    assert RunContents(loss_points=100, val_loss_points=10).loss_for_knee() == ("val_loss", None)
    assert RunContents(loss_points=100, val_loss_points=2).loss_for_knee() == (
        "loss", "only 2 validation-loss values logged (a knee needs >= 5): loss knee on the training loss")
    assert RunContents(loss_points=0).loss_for_knee()[0] is None


def test_onset_rule_edges():
    steps = np.arange(0, 100, 1)
    flat = np.ones(100)
    assert onset_step(steps, flat) is None  # no decay: the peak is within the factor of the floor
    decay = np.where(steps < 30, 10.0 - 0.25 * steps, 1.0)  # 10 -> 2.75 linearly, then the floor 1
    assert onset_step(steps, decay) == 30  # 2.75 > 2 x floor; from step 30 on, exactly the floor
    assert onset_step(steps, decay, factor=2.9) == 29  # 2.75 <= 2.9 x floor < 3.0 (step 28)
    late = decay.copy()
    late[-1] = late[-40] = 50.0  # single spikes are smoothed away (moving median)
    assert onset_step(steps, late) == 30
    late[-5:] = 50.0  # a late rise that lasts: never settles
    assert onset_step(steps, late, SosdRule().factor) is None
    assert loss_knee(np.arange(3), np.ones(3)) is None


def test_paired_schedule_is_due_at_t_and_t_plus_1():
    s = paired(every(25))
    assert [t for t in range(80) if s(t)] == [0, 1, 25, 26, 50, 51, 75, 76]
    assert str(s) == "paired(every 25)" and s.steps is None
    listed = paired(ss.probes.at([3, 10]))
    assert listed.steps == {3, 4, 10, 11} and [t for t in range(20) if listed(t)] == [3, 4, 10, 11]
    assert paired(5)(6) and not paired(5)(7)
    w = ss.probes.Weights(every=4, paired=True)
    assert [t for t in range(10) if w.due(t)] == [0, 1, 4, 5, 8, 9]
    assert w.describe()["paired"] and w.describe()["schedule"] == "paired(every 4)"


def test_paired_weights_probe_measures_consecutive_steps(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ss.Monitor(model, tmp_path / "m", probes=[ss.probes.Weights(every=5, paired=True)]) as mon:
        for step in range(12):
            loss = model(torch.randn(4, 8)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(step, loss=loss.item(), lr=0.1)
    run = ss.open_run(tmp_path / "m")
    assert sorted(run.metrics(probe="weights")["step"].unique()) == [0, 1, 5, 6, 10, 11]
    s = variation_series(run)
    assert sorted(s["step"].unique()) == [0, 5, 10] and s["paired"].all()
