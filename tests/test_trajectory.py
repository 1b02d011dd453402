"""Trajectory spectra: the rolling window of parameter updates, exact and sketched."""
import numpy as np
import pytest
import torch

import specscope as ss
from specscope.streams import CountSketch, TrajectoryWindow
from specscope.train import GPT, GPTConfig


def test_incremental_gram_and_spectrum_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    w = TrajectoryWindow(16, store_dtype=torch.float64)
    for _ in range(1000):
        w.update(torch.randn(500, generator=g, dtype=torch.float64) * torch.rand(1, generator=g, dtype=torch.float64))
    ref = w.recompute()
    assert torch.allclose(w.gram, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    sv = torch.linalg.svdvals(torch.stack(w.rows)).numpy()
    np.testing.assert_allclose(w.singular_values(), sv, rtol=1e-9, atol=1e-9 * sv[0])
    stab = w.stability()
    assert ((stab >= 0) & (stab <= 1 + 1e-12)).all()


def test_stability_of_a_fixed_direction_is_one():
    u = torch.randn(200, dtype=torch.float64)
    w = TrajectoryWindow(8, store_dtype=torch.float64)
    for t in range(8):
        w.update((1 + t) * u + 1e-6 * torch.randn(200, dtype=torch.float64))
    assert abs(w.stability(1)[0] - 1.0) < 1e-6


def test_sketch_finds_a_planted_gap():
    P, W, k = 1_000_000, 16, 4096
    g = torch.Generator().manual_seed(1)
    dirs = torch.linalg.qr(torch.randn(P, 3, generator=g, dtype=torch.float64))[0].T  # 3 orthonormal directions
    scales = torch.tensor([10.0, 7.0, 5.0], dtype=torch.float64)
    exact, sk = TrajectoryWindow(W, store_dtype=torch.float64), TrajectoryWindow(W, store_dtype=torch.float64)
    sketch = CountSketch(P, k, seed=0)
    for _ in range(W):
        coef = torch.randn(3, generator=g, dtype=torch.float64) * scales
        d = coef @ dirs + 0.3 * torch.randn(P, generator=g, dtype=torch.float64) / np.sqrt(P)
        exact.update(d)
        sk.update(sketch(d))
    se, ss_ = exact.singular_values(), sk.singular_values()
    top = lambda s: int(np.argmax(s[:8] / s[1:9])) + 1
    assert top(se) == 3 and top(ss_) == 3  # kstar: the gap after the third direction
    np.testing.assert_allclose(ss_[:3], se[:3], rtol=0.05)


def test_trajectory_probe_in_training(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=2, n_head=2, d_model=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    probes = [ss.probes.Trajectory(window=4, every=5, matrices=[(0, "q")]),
              ss.probes.Trajectory(window=4, every=5, mode="sketch", k=256, name="trajectory_sketch")]
    snaps = []
    with ss.Monitor(model, tmp_path / "r", probes=probes) as mon:
        for step in range(11):
            x = torch.randint(0, 32, (4, 8))
            _, loss = model(x, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            snaps.append(model.blocks[0].attn.q.weight.detach().clone().double().reshape(-1))
            mon.step(step, loss=loss.item())
    run = ss.open_run(tmp_path / "r")
    spec = run.spectra(probe="trajectory", step=10)
    q = spec[spec["kind"] == "q"].iloc[0]
    updates = torch.stack([snaps[i + 1] - snaps[i] for i in range(6, 10)])  # the last 4 updates
    sv = torch.linalg.svdvals(updates).numpy()
    np.testing.assert_allclose(q["values"], sv, rtol=1e-5)
    m = run.metrics()
    assert {"kstar", "gap_ratio", "k95", "stability[1]"} <= set(m[m["probe"] == "trajectory"]["metric"])
    mq = m[(m["probe"] == "trajectory") & (m["kind"] == "q") & (m["step"] == 10)].set_index("metric")["value"]
    ratios = sv[:-1] / sv[1:]
    assert mq["kstar"] == np.argmax(ratios) + 1 and mq["gap_ratio"] == pytest.approx(ratios.max(), rel=1e-4)
    assert mq["k95"] == (np.cumsum(sv ** 2) < 0.95 * (sv ** 2).sum()).sum() + 1 and mq["window_updates"] == 4
    sketch = m[(m["probe"] == "trajectory_sketch") & (m["metric"] == "gap_ratio")].set_index(["step", "name"])["value"]
    spec = run.spectra(probe="trajectory_sketch")
    assert sorted(sketch.index) == sorted(zip(spec["step"], spec["name"])) == [(5, "global"), (10, "global")]
    for r in spec.itertuples():  # each sketched gap ratio is its stored spectrum's largest consecutive ratio
        s = np.asarray(r.values)
        assert sketch[(r.step, r.name)] == pytest.approx(np.max(s[:-1] / s[1:]), rel=1e-12)
    from specscope.analysis.edge import edge_analysis

    table, events, verdict = edge_analysis(run)
    assert table["step"].tolist() == [5, 10] and set(table["phase"]) <= {"rise", "plateau", "decline", "collapse"}
    assert verdict["peak_step"] in (5, 10) and verdict["best_lag"] is None  # no validation loss logged here


def test_offline_trajectory_over_checkpoints_equals_brute_force(tmp_path):
    from safetensors.torch import save_model

    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=2, n_head=2, d_model=16))
    snaps = []
    with torch.no_grad():
        for step in range(0, 70, 10):
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
            save_model(model, str(tmp_path / f"step_{step:07d}.safetensors"))
            snaps.append(model.blocks[1].attn.q.weight.detach().clone().double().reshape(-1))
    df = ss.trajectory(tmp_path, window=4, matrices=[(1, "q")], run_dir=tmp_path / "store", progress=False)
    q = df[df["kind"] == "q"].set_index("step")
    assert q.loc[0, "window_updates"] != q.loc[0, "window_updates"]  # NaN: no update yet at the first checkpoint
    assert q.loc[60, "window_updates"] == 4
    run = ss.open_run(tmp_path / "store")
    spec = run.spectra(probe="trajectory", step=60)
    got = spec[spec["kind"] == "q"].iloc[0]["values"]
    updates = torch.stack([snaps[i + 1] - snaps[i] for i in range(2, 6)])
    np.testing.assert_allclose(got, torch.linalg.svdvals(updates).numpy(), rtol=1e-9)
    assert set(df["name"]) == {"global", "blocks.1.attn.q"} and len(df) == 2 * 7
    with pytest.raises(ss.SpecscopeError, match="at least 3"):
        ss.trajectory(tmp_path / "step_0000000.safetensors", progress=False)


def test_cli_trajectory_over_checkpoints(tmp_path, capsys):
    from safetensors.torch import save_model

    from specscope.cli import main

    model = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=2, n_head=2, d_model=16))
    with torch.no_grad():
        for step in range(0, 50, 10):
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
            save_model(model, str(tmp_path / f"step_{step:07d}.safetensors"))
    assert main(["analyze", str(tmp_path), "--trajectory", "3", "--sketch", "512", "--matrix", "0:q", "--no-progress",
                 "--into", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "gap_ratio" in out and "blocks.0.attn.q" in out
    assert main(["analyze", str(tmp_path), "--trajectory", "3", "--matrix", "9:q", "--no-progress"]) == 2
    assert "no matrix of kind 'q' in block 9" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path), "--trajectory", "3", "--matrix", "q"]) == 2  # argparse: one line, exit 2


def test_trajectory_with_nothing_to_follow_says_so(tmp_path, caplog):
    model = torch.nn.ModuleDict({"embed_tokens": torch.nn.Embedding(10, 4), "lm_head": torch.nn.Linear(4, 10)})
    # only an embedding and an output head: no hidden matrix
    with caplog.at_level("WARNING"), ss.Monitor(model, tmp_path / "r", probes=[ss.probes.Trajectory(window=4, every=2)]) as mon:
        for step in range(5):
            mon.step(step, loss=1.0)
    m = ss.open_run(tmp_path / "r").metrics(probe="trajectory")
    assert list(m["step"]) == [0, 2, 4] and m["value"].isna().all()
    assert m["status"].str.contains("no matrix with layer >= 0").all()
    assert caplog.text.count("no global track") == 1  # logged once, not at every step
