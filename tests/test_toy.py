import numpy as np
import pytest
import torch

from specscope.train import GPT, GPTConfig
from specscope.experiments.toy import (accuracy, band_concentration, cyclic_shift, dyck1, fourier_energy, modular_arithmetic,
                                       peak_concentration, top_band_concentration)


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


def _brute_grok_step(steps, accs, threshold=0.95):
    """The first evaluation after which no evaluation falls below ``threshold`` (a loop over candidates)."""
    for i, s in enumerate(steps):
        if all(a >= threshold for a in accs[i:]):
            return s
    return None


def reference_grok_row(run) -> dict:
    """A grokking row's final numbers, recomputed from the run store: the gaps from the stored spectra, the rest from
    the last evaluation's scalars."""
    sv, traj = _last_spectrum(run, "weights"), _last_spectrum(run, "trajectory")
    ev = run.scalars().dropna(subset=["test_acc"]).sort_values("step")
    grok = _brute_grok_step(ev["step"].tolist(), ev["test_acc"].tolist())
    last = ev.iloc[-1]
    return {"gap12_wq_final": sv[0] / sv[1], "traj_gap_final": float(np.max(traj[:-1] / traj[1:])),
            "final_train_acc": last["train_acc"], "final_test_acc": last["test_acc"],
            "grok_step": float("nan") if grok is None else float(grok),
            **{f"{k}_final": last[k] if k in ev else float("nan") for k in ("h_peak", "h_s")}}


def test_grok_step_is_where_test_accuracy_stays_above_the_threshold():
    from specscope.analysis.grokking import grok_step

    steps = [20, 40, 60, 80, 100, 120, 140, 160]
    lucky = [0.1, 0.96, 0.5, 0.7, 0.94, 0.96, 1.0, 0.98]  # a lucky evaluation at 40, then a drop: not the grok step
    assert grok_step(steps, lucky) == 120 == _brute_grok_step(steps, lucky)
    assert grok_step(steps[::-1], lucky[::-1]) == 120  # taken in step order
    assert grok_step(steps, [0.1] * 7 + [0.99]) == 160  # settled at the last evaluation
    assert grok_step(steps, lucky[:-1] + [0.9]) is None  # dropped at the end: never grokked
    assert grok_step(steps, [0.95] * 8) == 20 and grok_step([], []) is None  # the threshold itself counts


def test_h_s_uses_the_same_number_of_frequencies_in_every_run():
    p = 47
    phase = np.repeat(np.arange(p), 2)

    def hidden(amps: dict[int, float]) -> np.ndarray:  # a cos / sin pair of amplitude A per frequency r: energy ~ A^2
        cols = [c for r, a in amps.items() for c in (a * np.cos(2 * np.pi * r * phase / p), a * np.sin(2 * np.pi * r * phase / p))]
        return np.stack(cols, axis=1)

    wide = {r: float(r) for r in range(1, 9)}  # 8 active frequencies of amplitudes 1..8
    narrow = {3: 1.0, 7: 1.0, 11: 1.0, **{r: 0.5 for r in (13, 14, 15, 16, 17, 18)}}  # 3 strong, 6 weak
    h_wide = top_band_concentration(fourier_energy(hidden(wide), phase, p), 5)
    h_narrow = top_band_concentration(fourier_energy(hidden(narrow), phase, p), 5)
    assert h_wide == pytest.approx(sum(a * a for a in range(4, 9)) / sum(a * a for a in range(1, 9)), rel=1e-9)
    assert h_narrow == pytest.approx((3 + 2 * 0.25) / (3 + 6 * 0.25), rel=1e-9)  # |S| = 5 for both, not 3 or 8

    from specscope.experiments.grokking import H_S_FREQS, GrokConfig, fourier_scalars

    class Planted(torch.nn.Module):  # hidden states planted at the last position
        def __init__(self, h):
            super().__init__()
            self.h = torch.from_numpy(h)

        def hidden_states(self, x):
            return [self.h[:, None, :]]

    x = torch.zeros(len(phase), 4, dtype=torch.long)
    assert H_S_FREQS == 5 and fourier_scalars(Planted(hidden(wide)), x, phase, p)["h_s"] == pytest.approx(h_wide, rel=1e-12)
    with pytest.raises(ValueError):
        top_band_concentration(np.ones(6), 5)  # 5 nonzero frequencies: an S of 5 would hold them all
    with pytest.raises(ValueError):
        GrokConfig(p=11).check()


def test_grok_summary_on_a_planted_run(tmp_path):
    from specscope.experiments.grokking import summarize
    from specscope.store.writer import RunWriter

    w = RunWriter(tmp_path / "g")
    accs = [0.1, 0.96, 0.5, 0.7, 0.94, 0.96, 1.0, 0.98]  # lucky at 40; settled from 120
    for i, step in enumerate(range(20, 161, 20)):
        for probe, metric, value in (("weights", "gap12", 1.0 + i), ("trajectory", "gap_ratio", 10.0 * (i + 1))):
            w.add("metrics", {"step": step, "tokens": None, "probe": probe, "layer": 0, "kind": "q", "name": "blocks.0.attn.q",
                              "metric": metric, "value": value, "status": "ok"})
        for name, value in (("train_acc", 0.5 + 0.05 * i), ("test_acc", accs[i]), ("h_peak", 0.1 * i), ("h_s", 0.2 + 0.1 * i)):
            w.add("scalars", {"step": step, "tokens": None, "name": name, "value": value, "wall_time": 0.0})
    w.close()
    row = summarize(tmp_path / "g", weight_decay=1.0, seed=3)
    # grok step 120; before: the measurement nearest half of it (60); at: 120; final: the last (160)
    assert row["grok_step"] == 120 and row["h_s_freqs"] == 5
    assert (row["gap12_wq_before"], row["gap12_wq_at"], row["gap12_wq_final"]) == (3.0, 6.0, 8.0)
    assert (row["traj_gap_before"], row["traj_gap_at"], row["traj_gap_final"]) == (30.0, 60.0, 80.0)
    assert (row["final_train_acc"], row["final_test_acc"]) == pytest.approx((0.85, 0.98))
    assert (row["h_peak_final"], row["h_s_final"]) == pytest.approx((0.7, 0.9))


def test_grok_claims_on_a_planted_table():
    import pandas as pd

    from specscope.experiments.grokking import claims

    rows = [{"weight_decay": 1.0, "seed": s, "grok_step": 100 * (s + 1), "gap12_wq_before": 1.0, "gap12_wq_at": np.e ** (s + 1),
             "traj_gap_before": 2.0, "traj_gap_at": 2.0, "h_s_final": 0.9 + 0.01 * s} for s in range(4)]
    rows += [{"weight_decay": 0.0, "seed": s, "grok_step": None, "gap12_wq_before": np.nan, "gap12_wq_at": np.nan,
              "traj_gap_before": np.nan, "traj_gap_at": np.nan, "h_s_final": 0.3 + 0.02 * s} for s in range(4)]
    c = claims(pd.DataFrame(rows)).set_index("claim")
    grok = c.iloc[0]
    assert grok["ours"].startswith("4/4 vs 0/4") and "p = 0.0143" in grok["ours"] and grok["verdict"] == "reproduced"
    gap = c.iloc[1]  # log(at / before) = 1, 2, 3, 4: mean 2.5 over the 4 grokked runs
    assert (gap["mean"], gap["n"], gap["verdict"]) == (pytest.approx(2.5), 4, "reproduced")
    traj = c.iloc[2]  # no change at all: a zero-width interval on 0 is not above it
    assert (traj["mean"], traj["verdict"]) == (0.0, "not significant")
    h = c.iloc[3]  # paired by seed: 0.6 - 0.01 s
    assert (h["mean"], h["n"], h["verdict"]) == (pytest.approx(0.585), 4, "reproduced")


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
    out = capsys.readouterr().out
    assert f"weight decay 1: {int(grokked.sum())}/1 runs grokked" in out and "Fisher's exact test" in out
    claims = pd.read_csv(tmp_path / "g" / "claims.csv")
    assert len(claims) == 4 and claims["verdict"].isin(["reproduced", "not reproduced", "not significant"]).all()
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
