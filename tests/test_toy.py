import numpy as np
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


def test_grokking_experiment_quick(tmp_path, capsys):
    from specscope.cli import main

    assert main(["experiment", "grokking", "--quick", "--out", str(tmp_path / "g"), "--no-progress"]) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "g" / "grokking.csv")
    assert sorted(table["weight_decay"]) == [0.0, 1.0] and (tmp_path / "g" / "grokking.png").exists()
    assert table["gap12_wq_final"].notna().all() and table["traj_gap_final"].notna().all()
    assert "runs grokked" in capsys.readouterr().out
    assert table["h_s_final"].between(0, 1 + 1e-12).all() and (table["h_s_final"] >= table["h_peak_final"]).all()
    assert main(["report", str(tmp_path / "g" / "wd1-seed0")]) == 0
    page = (tmp_path / "g" / "wd1-seed0" / "report.html").read_text()
    for section in ("Grokking watch", "Trajectory gap ratio and phases", "Singular values of the update window",
                    "Stability of the top update directions"):
        assert section in page


def test_grokking_experiment_on_dyck1(tmp_path):
    import pandas as pd

    from specscope.cli import main

    assert main(["experiment", "grokking", "--quick", "--task", "dyck1", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "d" / "grokking.csv")
    assert set(table["task"]) == {"dyck1"} and table["final_test_acc"].between(0, 1).all()
    assert table["h_s_final"].isna().all()  # no latent phase in Dyck-1
