import numpy as np
import pytest

import specscope as ss
from specscope.analysis import across_time
from specscope.report import summary, write_report
from specscope.store import RunWriter


def _spectra_run(path, series):
    w = RunWriter(path)
    for step, sv in series:
        w.add("spectra", {"step": step, "tokens": step * 100, "probe": "weights", "layer": 0, "kind": "q", "name": "b.0.q",
                          "quantity": "sv", "values": list(sv), "status": "ok"})
        w.add("scalars", {"step": step, "tokens": step * 100, "name": "loss", "value": 1.0, "wall_time": 0.0})
    w.close()
    return ss.open_run(path)


def test_across_time_metrics(tmp_path):
    run = _spectra_run(tmp_path / "r", [(0, [2.0, 2.0]), (10, [3.0, 1.0]), (30, [3.0, 1.0])])
    df = across_time(run)
    get = lambda m: df[df["metric"] == m].sort_values("step")["value"].to_numpy()
    var = get("sd_variation")
    assert np.isnan(var[0]) and var[1] == pytest.approx(np.sqrt(2) * 0.25) and var[2] == 0
    assert get("sd_variation_per_step")[1] == pytest.approx(np.sqrt(2) * 0.25 / 10)
    # stable rank 2 -> 10/9: compression 1 - (10/9)/2
    np.testing.assert_allclose(get("compression"), [0, 1 - 5 / 9, 1 - 5 / 9])
    assert get("cos_sd_final")[-1] == pytest.approx(1.0)
    assert get("cos_sd_final")[0] == pytest.approx((0.5 * 0.75 + 0.5 * 0.25) / (np.sqrt(0.5) * np.sqrt(0.625)))
    np.testing.assert_allclose(get("nuclear_norm"), [4.0, 4.0, 4.0])
    assert "sd_variation_lr" not in set(df["metric"])  # the run logged no learning rate


def test_across_time_lr_normalized(tmp_path):
    w = RunWriter(tmp_path / "r")
    for step, sv in ((0, [2.0, 2.0]), (10, [3.0, 1.0]), (11, [3.0, 1.0])):
        w.add("spectra", {"step": step, "tokens": None, "probe": "weights", "layer": 0, "kind": "q", "name": "b.0.q",
                          "quantity": "sv", "values": sv, "status": "ok"})
    for step, lr in ((5, 0.1), (10, 0.2)):  # lr logged at steps 5 and 10 only: held until the next one
        w.add("scalars", {"step": step, "tokens": None, "name": "lr", "value": lr, "wall_time": 0.0})
    w.close()
    df = across_time(ss.open_run(tmp_path / "r"))
    v = df[df["metric"] == "sd_variation_lr"].sort_values("step")["value"].to_numpy()
    # (0 -> 10): sqrt(2) 0.25 over 10 steps, times ||W_0||_* = 4, over the rate at step 10 (0.2)
    assert np.isnan(v[0]) and v[1] == pytest.approx(np.sqrt(2) * 0.25 / 10 * 4 / 0.2) and v[2] == 0


def test_describe_eigenvalue_spectrum():
    lam = np.arange(1, 301, dtype=float) ** -1.2
    d = ss.describe(lam, spectrum="eig")
    assert d["alpha_tail"] == pytest.approx(1.2) and d["stable_rank"] == pytest.approx(lam.sum())


def test_report_of_a_run_without_probe_data(tmp_path):
    run = _spectra_run(tmp_path / "r", [(0, [2.0, 1.0])])
    path = write_report(run.dir, tmp_path / "out" / "rep.html")
    html = path.read_text()
    assert "Loss" in html and "only 1 weight measurement" not in html
    assert "no weight-probe measurements in this run: SoSD onset needs the Weights probe" in html  # spectra, no metrics
    assert "no probe measurements" in summary(run)


def test_summary_prints_the_planted_numbers(tmp_path):
    w = RunWriter(tmp_path / "s")
    planted = {(0, 0): 4.0, (0, 1): 6.0, (10, 0): 2.0, (10, 1): 3.0}  # (step, layer) -> q stable rank
    for (step, layer), value in planted.items():
        w.add("metrics", {"step": step, "tokens": None, "probe": "weights", "layer": layer, "kind": "q", "name": f"b.{layer}.q",
                          "metric": "stable_rank", "value": value, "status": "ok"})
    w.add("metrics", {"step": 10, "tokens": None, "probe": "weights", "layer": 1, "kind": "q", "name": "b.1.q",
                      "metric": "alpha_tail", "value": float("nan"), "status": "no tail window"})
    for step, rankme, alpha in ((0, 10.0, 0.8), (10, 7.5, 1.2)):
        for metric, value in (("rankme", rankme), ("alpha_tail", alpha)):
            w.add("metrics", {"step": step, "tokens": None, "probe": "activations", "layer": 3, "kind": "resid",
                              "name": "blocks.3", "metric": metric, "value": value, "status": "ok"})
    for step, loss in ((0, 2.0), (5, 0.5), (10, 0.25)):
        w.add("scalars", {"step": step, "tokens": None, "name": "loss", "value": loss, "wall_time": 0.0})
    w.close()
    text = summary(ss.open_run(tmp_path / "s"))
    assert "last step 10, last loss 0.25" in text
    assert "2 measurements (steps 0..10), 9 values, 1 NaN with a status" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("q "))
    # mean stable rank over the two layers 5 -> 2.5: compression 1 - 2.5 / 5
    assert row.split()[:5] == ["q", "2", "5", "→", "2.5"] and row.split()[-1] == "+50.0%"
    assert "activations of block 3: rankme 10 → 7.5, alpha_tail 0.8 → 1.2 (steps 0 → 10)" in text


def test_hf_scalar_names_are_read_as_the_analyses_names(tmp_path):
    from specscope.analysis.coverage import contents, training_scalars
    from specscope.analysis.timeseries import lr_series

    w = RunWriter(tmp_path / "hf")
    for step in range(0, 50, 5):
        w.add_many("scalars", [{"step": step, "tokens": None, "name": "eval_loss", "value": 3.0 - step / 50, "wall_time": 0.0},
                               {"step": step, "tokens": None, "name": "learning_rate", "value": 1e-3, "wall_time": 0.0}])
    w.close()
    run = ss.open_run(tmp_path / "hf")
    sc = training_scalars(run)
    np.testing.assert_array_equal(sc["val_loss"], sc["eval_loss"])
    assert "val_loss" not in run.scalars()  # the store keeps the names as logged
    c = contents(run)
    assert c.val_loss_points == 10 and c.has_lr
    lr, col = lr_series(run)
    assert col == "lr" and (lr == 1e-3).all() and len(lr) == 10
