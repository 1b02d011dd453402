import numpy as np
import pytest
import torch

from specscope.train import GPT, GPTConfig
from specscope.experiments.toy import (accuracy, band_concentration, cyclic_shift, dyck1, fourier_energy, modular_arithmetic,
                                 peak_concentration)


def test_modular_arithmetic_data():
    d = modular_arithmetic(p=11, op="-", train_frac=0.5, seed=1)
    x = torch.cat([d.train_x, d.test_x])
    y = torch.cat([d.train_y, d.test_y])
    assert len(x) == 121 and d.vocab_size == 11 + 4
    assert ((x[:, 0] - x[:, 2]) % 11 == y).all() and (x[:, 1] == 12).all() and (x[:, 3] == 14).all()
    assert len(d.train_x) == 60 or len(d.train_x) == 61


def test_cyclic_shift_and_dyck():
    d = cyclic_shift(c=16, length=5, offset=2, steps=(3,), train_frac=1.0)
    x, y = d.train_x, d.train_y
    assert (((x[:, 1] - x[:, 0]) % 16) == 3).all() and (((y - 2) - (x[:, -1] - 2)) % 16 == 3).all()
    k = dyck1(n=200, length=8)
    xs, ys = torch.cat([k.train_x, k.test_x]), torch.cat([k.train_y, k.test_y])
    for s, a in zip(xs.tolist(), ys.tolist()):
        depth, ok = 0, True
        for t in s[:-1]:
            depth += 1 if t == 0 else -1
            ok = ok and depth >= 0
        assert (a == 2) == (ok and depth == 0)
    assert 0.4 < (ys == 2).float().mean() < 0.7


def test_fourier_probes_on_a_known_frequency():
    c = 32
    phase = np.repeat(np.arange(c), 3)
    h = np.stack([np.cos(2 * np.pi * 5 * phase / c), np.sin(2 * np.pi * 5 * phase / c), 0.0 * phase], axis=1)
    m = fourier_energy(h, phase, c)
    assert np.argmax(m) == 5 and peak_concentration(m) > 0.999 and band_concentration(m, [4, 5, 6]) > 0.999


def test_a_small_model_learns_modular_addition_train_set():
    torch.manual_seed(0)
    d = modular_arithmetic(p=7, train_frac=0.8)
    model = GPT(GPTConfig(vocab_size=d.vocab_size, seq_len=4, n_layer=2, n_head=2, d_model=64, tied=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(300):
        logits, _ = model(d.train_x)
        loss = torch.nn.functional.cross_entropy(logits[:, -1], d.train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy(model, d.train_x, d.train_y) > 0.9


def _last_spectrum(run, probe: str) -> np.ndarray:
    """The last stored spectrum of ``probe`` for W_Q of block 0."""
    s = run.spectra(probe=probe)
    s = s[(s["layer"] == 0) & (s["kind"] == "q")].sort_values("step")
    return np.asarray(s["values"].iloc[-1])


def reference_grok_row(run) -> dict:
    """A grokking row's final numbers, recomputed from the run store: the gaps from the stored spectra, the rest from
    the last evaluation's scalars."""
    sv, traj = _last_spectrum(run, "weights"), _last_spectrum(run, "trajectory")
    ev = run.scalars().dropna(subset=["test_acc"]).sort_values("step")
    hit = ev[ev["test_acc"] >= 0.95]
    last = ev.iloc[-1]
    return {"gap12_wq_final": sv[0] / sv[1], "traj_gap_final": float(np.max(traj[:-1] / traj[1:])),
            "final_train_acc": last["train_acc"], "final_test_acc": last["test_acc"],
            "grok_step": float(hit["step"].iloc[0]) if len(hit) else float("nan"),
            **{f"{k}_final": last[k] if k in ev else float("nan") for k in ("h_peak", "h_s")}}


def test_grok_summary_on_a_planted_run(tmp_path):
    from specscope.experiments.grokking import summarize
    from specscope.store.writer import RunWriter

    w = RunWriter(tmp_path / "g")
    for i, step in enumerate((20, 40, 60, 80)):
        for probe, metric, value in (("weights", "gap12", 1.0 + i), ("trajectory", "gap_ratio", 10.0 * (i + 1))):
            w.add("metrics", {"step": step, "tokens": None, "probe": probe, "layer": 0, "kind": "q", "name": "blocks.0.attn.q",
                              "metric": metric, "value": value, "status": "ok"})
        for name, value in (("train_acc", 0.5 + 0.1 * i), ("test_acc", 0.2 * i), ("h_peak", 0.1 * i), ("h_s", 0.2 + 0.1 * i)):
            w.add("scalars", {"step": step, "tokens": None, "name": name, "value": value, "wall_time": 0.0})
    w.close()
    row = summarize(tmp_path / "g", grok_step=55, weight_decay=1.0, seed=3)
    # before: the last evaluation before step 55 (40); at: the nearest (60); final: the last (80)
    assert (row["gap12_wq_before"], row["gap12_wq_at"], row["gap12_wq_final"]) == (2.0, 3.0, 4.0)
    assert (row["traj_gap_before"], row["traj_gap_at"], row["traj_gap_final"]) == (20.0, 30.0, 40.0)
    assert (row["final_train_acc"], row["final_test_acc"]) == pytest.approx((0.8, 0.6))
    assert (row["h_peak_final"], row["h_s_final"]) == pytest.approx((0.3, 0.5))
    none = summarize(tmp_path / "g", grok_step=None, weight_decay=1.0, seed=3)  # never grokked: only the final values
    assert np.isnan(none["gap12_wq_before"]) and np.isnan(none["gap12_wq_at"]) and none["gap12_wq_final"] == 4.0


@pytest.mark.smoke
def test_smoke_grokking_experiment_quick(tmp_path, capsys):
    from specscope.cli import main

    assert main(["experiment", "grokking", "--quick", "--out", str(tmp_path / "g"), "--no-progress"]) == 0
    import pandas as pd

    import specscope as ss

    table = pd.read_csv(tmp_path / "g" / "grokking.csv")
    assert sorted(table["weight_decay"]) == [0.0, 1.0] and (tmp_path / "g" / "grokking.png").exists()
    for r in table.itertuples():  # 60 steps have no known answer: the row recomputed from its run store
        ref = reference_grok_row(ss.open_run(r.run_dir))
        assert {k: getattr(r, k) for k in ref} == pytest.approx(ref, rel=1e-6, nan_ok=True), r.run_dir
    assert table["h_s_final"].between(0, 1 + 1e-12).all() and (table["h_s_final"] >= table["h_peak_final"]).all()
    grokked = (table["weight_decay"] == 1.0) & table["grok_step"].notna()
    assert f"weight decay 1: {int(grokked.sum())}/1 runs grokked" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "g" / "wd1-seed0")]) == 0
    page = (tmp_path / "g" / "wd1-seed0" / "report.html").read_text()
    for section in ("Grokking watch", "Trajectory gap ratio and phases", "Singular values of the update window",
                    "Stability of the top update directions"):
        assert section in page


@pytest.mark.smoke
def test_smoke_grokking_experiment_on_dyck1(tmp_path):
    import pandas as pd

    from specscope.cli import main

    assert main(["experiment", "grokking", "--quick", "--task", "dyck1", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "d" / "grokking.csv")
    assert set(table["task"]) == {"dyck1"}
    import specscope as ss

    for r in table.itertuples():
        ref = reference_grok_row(ss.open_run(r.run_dir))
        assert (r.final_train_acc, r.final_test_acc, r.gap12_wq_final) == pytest.approx(
            (ref["final_train_acc"], ref["final_test_acc"], ref["gap12_wq_final"]), rel=1e-6)
    assert table["h_s_final"].isna().all()  # no latent phase in Dyck-1
