"""The lens study's toy family (Spectral Lens Fig. 4a: the cyclic-shift batch sweep) and its claims table."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

import specscope as ss
from specscope.experiments.lens import lens_claims
from specscope.experiments.lens_toy import ToyLensConfig, shift_loss
from specscope.train import GPT, GPTConfig


def test_shift_loss_equals_a_loop_over_positions():
    torch.manual_seed(0)
    data = ToyLensConfig.quick().data(0)
    x, y = data.train_x[:6], data.train_y[:6]
    seq = torch.cat([x, y[:, None]], dim=1)
    d = (seq[:, 1] - seq[:, 0]) % 16
    assert torch.equal((seq[:, 1:] - seq[:, :-1]) % 16, d[:, None].expand(-1, 8))  # a cyclic shift, answer included
    model = GPT(GPTConfig(vocab_size=data.vocab_size, seq_len=8, n_layer=1, n_head=2, d_model=16, positions="rope")).double()
    logits = model(x)[0]
    ref = np.mean([torch.nn.functional.cross_entropy(logits[i, j], seq[i, j + 1]).item()
                   for i in range(6) for j in range(1, 8)])  # every prediction but the first (d is unknown there)
    assert shift_loss(model, x, y).item() == pytest.approx(ref, rel=1e-12)


def _verdict(rho, best, by_window=None, censored=0):
    return {"window": "10:40", "rho_within_family": rho, "best_predicted": best, "censored": censored,
            "rho_by_window": by_window or {"10:40": rho}}


def test_lens_claims_on_planted_verdicts():
    good = lens_claims({0: _verdict(0.9, 1.0, {"10:40": 0.9, "40:90": -0.9}), 1: _verdict(0.8, 1.0, {"10:40": 0.8, "40:90": -0.8}),
                        2: _verdict(1.0, 1.0, {"10:40": 1.0, "40:90": -1.0})}, "toy").set_index("claim")
    rho = good.iloc[0]
    assert rho["verdict"] == "reproduced" and rho["mean"] == pytest.approx(0.9) and rho["n"] == 3
    assert "Fig. 4a" in rho["paper"] and "seed 0: 0.90, seed 1: 0.80, seed 2: 1.00" in rho["ours"]
    assert good.iloc[1]["verdict"] == "reproduced"  # the best batch predicted at every seed
    assert good.loc["rho > 0 over bank window 40:90", "verdict"] == "not reproduced"
    noisy = lens_claims({s: _verdict(r, b, censored=1) for s, r, b in ((0, 0.4, 1.0), (1, -0.3, 0.0), (2, 0.1, 1.0))}, "stdlib")
    assert noisy["verdict"].tolist()[:2] == ["not significant", "not significant"]
    assert "0.97" in noisy["paper"].iloc[0] and "(3 censored run(s) left out)" in noisy["ours"].iloc[0]


@pytest.mark.smoke
def test_smoke_toy_sweep_quick(tmp_path, capsys):
    from specscope.cli import main

    out = tmp_path / "lens"
    assert main(["experiment", "lens", "--quick", "--out", str(out), "--no-progress"]) == 0  # the toy family by default
    table = pd.read_csv(out / "lens.csv").set_index("batch")
    assert sorted(table.index) == [4, 8, 16] and (table["seed"] == 0).all() and (table["window"] == "10:32").all()
    runs = {b: ss.open_run(out / "seed0" / f"B{b}") for b in (4, 8, 16)}
    assert {r.config["model"]["d_model"] for r in runs.values()} == {32}
    # numbers of 8k-token runs have no known answer: T, eps_tok and the early exponent recomputed from the stores
    evals = {b: r.scalars().dropna(subset=["val_loss"]) for b, r in runs.items()}
    target = max(float(e["val_loss"].min()) for e in evals.values())
    T = pd.Series({b: float(e[e["val_loss"] <= target]["tokens"].iloc[0]) for b, e in evals.items()})
    assert table["T"].to_dict() == pytest.approx(T.to_dict()) and table["eps_tok"].to_dict() == pytest.approx((T / T.min()).to_dict())
    assert set(evals[4]["tokens"]) == set(evals[16]["tokens"])  # every batch size evaluated at the same token counts
    budget = 0.2 * T.median()
    early = {}
    for b, r in runs.items():
        m = r.metrics(probe="activations", metric="alpha_tail")  # the probe's own exponent, over the same window
        early[b] = float(m[m["tokens"] >= budget].sort_values("tokens")["value"].iloc[0])
    assert table["early_alpha"].to_dict() == pytest.approx(early, rel=1e-9)
    rho = spearmanr(pd.Series(early), T / T.min())[0]
    claims = pd.read_csv(out / "claims.csv")
    assert claims["mean"].iloc[0] == pytest.approx(rho, nan_ok=True) and claims["n"].iloc[0] == (0 if np.isnan(rho) else 1)
    text = capsys.readouterr().out
    assert "family: toy" in text and "seed 0:" in text and "by window: 10:32" in text
