"""Learning-rate candidates and synchronized successive halving on synthetic objectives (no training)."""
import math

import numpy as np
import pytest

from specscope.experiments.halving import Candidate, lr_candidates, one_at_a_time, successive_halving


def test_lr_candidates_both_rules_deduplicated():
    assert lr_candidates(8, 8, 1e-3) == pytest.approx(sorted({1e-3 * m for m in (0.5, 2 ** -0.5, 1, 2 ** 0.5, 2)}))
    c = lr_candidates(16, 4, 1e-3)  # centers 4e-3 (linear) and 2e-3 (sqrt): 2e-3 * 2 = 4e-3 * 1 etc. coincide
    assert len(c) == len(set(np.round(np.log2(c), 9))) == 7
    assert min(c) == pytest.approx(1e-3) and max(c) == pytest.approx(8e-3)


def test_successive_halving_finds_the_known_winner_per_group():
    # synthetic objective: loss(lr, tokens) = 2 + 5 / tokens + (log2(lr / best))^2 / 10; best lr differs by tier
    best = {1: 2e-3, 8: 8e-3}
    calls = []

    def train_to(c, tokens):
        calls.append((c.name, tokens))
        return 2 + 5 / tokens + math.log2(c.params["lr"] / best[c.group]) ** 2 / 10

    cands = [Candidate(f"B{b}-lr{lr:.3g}", b, {"lr": lr}) for b in (1, 8) for lr in lr_candidates(b, 1, 2e-3)]
    table = successive_halving(cands, [10, 30, 100], one_at_a_time(train_to))
    winners = table[(table["rung"] == 2) & table["promoted"]]
    assert sorted(zip(winners["group"], winners["lr"])) == [(1, pytest.approx(2e-3)), (8, pytest.approx(8e-3))]
    per_rung = table.groupby(["rung", "group"]).size().unstack()
    assert per_rung.loc[0].tolist() == [5, 8] and per_rung.loc[1].tolist() == [2, 4] and per_rung.loc[2].tolist() == [1, 2]
    assert len(calls) == len(table)  # each candidate trained once per rung it reached


def test_failed_trials_rank_last_and_a_group_keeps_one_survivor():
    cands = [Candidate("a", "g", {}), Candidate("b", "g", {}), Candidate("solo", "h", {})]
    losses = {"a": float("nan"), "b": 3.0, "solo": float("nan")}
    table = successive_halving(cands, [1, 2], one_at_a_time(lambda c, t: losses[c.name]))
    assert table[(table["rung"] == 0) & table["promoted"]]["name"].tolist() == ["b", "solo"]
    with pytest.raises(ValueError):
        successive_halving(cands, [2, 1], one_at_a_time(lambda c, t: 0.0))


SWEEP = """
name = "tiny"
batches = [2]
ref_batch = 2
ref_lr = 0.01
micro_batch = 2
multipliers = [1.0, 2.0]
rungs = [512, 1024]
max_corpus_mb = 1.0
[model]
vocab_size = 256
seq_len = 16
n_layer = 1
n_head = 2
d_model = 16
[train]
warmup = 2
eval_every = 8
probe_every = 8
lens_every = 0
pool_size = 4
"""


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sweep_of_two_tiny_trials(tmp_path, executor, monkeypatch):
    if executor == "ray":
        pytest.importorskip("ray")
    monkeypatch.setenv("SPECSCOPE_CACHE", str(tmp_path / "cache"))
    from specscope.cli import main

    (tmp_path / "sweep.toml").write_text(SWEEP)
    args = ["sweep", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "s"), "--no-progress"]
    assert main(args + (["--local"] if executor == "local" else [])) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "s" / "sweep.csv")
    assert len(table[table["rung"] == 0]) == 2 and len(table[table["rung"] == 1]) == 1  # top half of 2 = 1 survivor
    trials = sorted(p.name for p in (tmp_path / "s" / "trials").iterdir())
    assert trials == ["B2-lr0.01", "B2-lr0.02"]
    import specscope as ss

    for r in table.itertuples():  # each rung's loss is the trial's last stored evaluation within the rung's tokens
        ev = ss.open_run(tmp_path / "s" / "trials" / r.name).scalars().dropna(subset=["val_loss"])
        assert r.val_loss == pytest.approx(ev[ev["tokens"] <= r.tokens].sort_values("step")["val_loss"].iloc[-1], rel=1e-12)
    assert table[table["rung"] == 0].sort_values("val_loss")["promoted"].tolist() == [True, False]  # the lower loss goes on
    winner = table[(table["rung"] == 1)]["name"].iloc[0]
    assert ss.open_run(tmp_path / "s" / "trials" / winner).scalars()["tokens"].max() == 1024  # resumed to the 2nd rung
    assert main(args + ["--local"]) == 0  # resumable: finished rungs return from the stored state
    from specscope.experiments.sweep import sweep_winners

    assert [p.name for p in sweep_winners(tmp_path / "s")] == [winner] and sweep_winners(tmp_path) == []
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2


def test_step_counts_given_in_tokens_are_converted_per_tier(tmp_path, monkeypatch):
    from dataclasses import asdict

    import specscope as ss
    from specscope.errors import ConfigError
    from specscope.experiments.sweep import SweepConfig, run_trial

    monkeypatch.setenv("SPECSCOPE_CACHE", str(tmp_path / "cache"))
    cfg = SweepConfig(batches=[1, 4], ref_batch=1, micro_batch=2, rungs=[640], max_corpus_mb=1.0,
                      model={"seq_len": 16, "n_layer": 1, "n_head": 2, "d_model": 16}, train={"lens_every": 0, "pool_size": 4},
                      train_tokens={"eval_every": 160, "probe_every": 160, "warmup": 64})
    for b, every in ((1, 10), (4, 3)):  # 160 tokens = 10 steps of 16 tokens, ceil(160 / 64) = 3 steps of 64
        run_trial(asdict(cfg), {"name": f"B{b}", "batch": b, "lr": 1e-3}, 640, str(tmp_path))
        tr = ss.open_run(tmp_path / "trials" / f"B{b}").config["train"]
        assert (tr["eval_every"], tr["probe_every"], tr["warmup"]) == (every, every, max(1, math.ceil(64 / (16 * b))))
        assert (tr["micro_batch"], tr["grad_accum"]) == (min(b, 2), b // min(b, 2))
    with pytest.raises(ConfigError, match="unknown train settings"):
        SweepConfig(train_tokens={"evaluate_every": 10}).check()
