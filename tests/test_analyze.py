"""Offline analysis: every input format, series, the run store, and bad inputs."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model

import specscope as ss
from specscope.train import GPT, GPTConfig

CFG = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32)


def cli(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "specscope", *args], capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def one_line_error(code, stderr, needle):
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in stderr, stderr


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(CFG)


def test_module_file_and_torch_checkpoint_agree(model, tmp_path):
    live = ss.analyze(model, progress=False)
    assert len(live) == 2 * 6 + 2  # blocks + tok_emb + pos_emb (lm_head tied)
    save_model(model, str(tmp_path / "m.safetensors"))
    torch.save({"model": model.state_dict(), "step": 5}, tmp_path / "m.pt")
    from_st = ss.analyze(tmp_path / "m.safetensors", progress=False)
    from_pt = ss.analyze(tmp_path / "m.pt", progress=False)
    blocks = lambda df: df[df["layer"] >= 0].set_index("name").sort_index()
    for df in (from_st, from_pt):
        np.testing.assert_allclose(blocks(df)["alpha_mle"], blocks(live)["alpha_mle"], rtol=1e-12)
        np.testing.assert_allclose(blocks(df)["stable_rank"], blocks(live)["stable_rank"], rtol=1e-12)
    d = ss.describe(model.blocks[1].attn.v.weight)
    row = live[(live["layer"] == 1) & (live["kind"] == "v")].iloc[0]
    assert row["alpha_mle"] == pytest.approx(d["alpha_mle"]) and row["d_out"] == 32


def test_hf_directory_and_bin(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=60, n_positions=16)
    m = transformers.GPT2LMHeadModel(cfg)
    m.save_pretrained(tmp_path / "hf")
    df = ss.analyze(tmp_path / "hf", progress=False)
    live = ss.analyze(m, progress=False)
    q = lambda d: d[(d["layer"] == 1) & (d["kind"] == "q")]["stable_rank"].iloc[0]
    assert q(df) == pytest.approx(q(live), rel=1e-12)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps(cfg.to_dict()))
    torch.save(m.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert q(ss.analyze(tmp_path / "bin", progress=False)) == pytest.approx(q(live), rel=1e-12)


def test_series_of_checkpoints_with_across_time_metrics(model, tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snaps = []
    for step in (0, 10, 20):
        save_model(model, str(d / f"step_{step:07d}.safetensors"))
        snaps.append(model.blocks[0].attn.q.weight.detach().double().clone())
        for _ in range(3):
            x = torch.randint(0, 64, (4, 16))
            _, loss = model(x, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    df = ss.analyze(d, progress=False)
    assert sorted(df["step"].unique()) == [0, 10, 20]
    q = df[(df["layer"] == 0) & (df["kind"] == "q")].sort_values("step")
    # brute force from the saved weights: singular distributions, stable ranks, flattened cosines
    sv = np.stack([torch.linalg.svdvals(w).numpy() for w in snaps])
    sd = sv / sv.sum(axis=1, keepdims=True)
    sr = (sv ** 2).sum(axis=1) / sv[:, 0] ** 2
    cos = lambda a, b: float(a @ b / np.sqrt((a @ a) * (b @ b)))
    flat = [w.reshape(-1).numpy() for w in snaps]
    assert np.isnan(q["sd_variation"].iloc[0])
    np.testing.assert_allclose(q["sd_variation"].iloc[1:], np.linalg.norm(np.diff(sd, axis=0), axis=1), rtol=1e-6)
    np.testing.assert_allclose(q["compression"], 1 - sr / sr[0], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(q["cos_sd_final"], [cos(x, sd[-1]) for x in sd], rtol=1e-9)
    np.testing.assert_allclose(q["cos_w_final"], [cos(x, flat[-1]) for x in flat], rtol=1e-9)
    # into a run store, then report on it
    code, out, err = cli("analyze", str(d), "--into", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    run = ss.open_run(tmp_path / "run")
    assert sorted(run.metrics(metric="alpha_mle")["step"].unique()) == [0, 10, 20]
    assert ss.write_report(run.dir).exists()


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_output_formats(model, tmp_path, fmt):
    save_model(model, str(tmp_path / "m.safetensors"))
    out = tmp_path / f"out.{fmt}"
    code, stdout, err = cli("analyze", str(tmp_path / "m.safetensors"), "--format", fmt, "--out", str(out), "--no-progress")
    assert code == 0, err
    import pandas as pd
    df = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](out)
    assert len(df) == 14 and "alpha_mle" in df.columns  # 12 block matrices, pos_emb, lm_head (tied)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_bad_inputs_one_line_exit_2(tmp_path, model):
    code, _, err = cli("analyze", str(tmp_path / "missing"))
    one_line_error(code, err, "no such file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    code, _, err = cli("analyze", str(tmp_path / "empty"))
    one_line_error(code, err, "no model")
    good = tmp_path / "good.safetensors"
    save_model(model, str(good))
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = cli("analyze", str(tmp_path / "trunc.safetensors"))
    one_line_error(code, err, "cannot read safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    code, _, err = cli("analyze", str(tmp_path / "garbage.safetensors"))
    one_line_error(code, err, "cannot read safetensors")
    save_file({"layer.weight": torch.randint(-5, 5, (8, 8), dtype=torch.int8)}, str(tmp_path / "int8.safetensors"))
    code, _, err = cli("analyze", str(tmp_path / "int8.safetensors"))
    one_line_error(code, err, "dtype")
    marker = tmp_path / "PWNED"
    torch.save({"w": Evil(str(marker))}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pkl.bin", "wb") as f:  # plain (non-zip) pickle too
        pickle.dump({"w": Evil(str(marker))}, f)
    for name in ("evil.pt", "evil.pkl.bin"):
        code, _, err = cli("analyze", str(tmp_path / name))
        one_line_error(code, err, "refusing to load")
    assert not marker.exists()
    (tmp_path / "x.onnx").write_bytes(b"0")
    code, _, err = cli("analyze", str(tmp_path / "x.onnx"))
    one_line_error(code, err, "unrecognized checkpoint format")


def test_cos_w_final_of_analyze_equals_the_analysis_one(model, tmp_path):
    """One function gives ``cos_w_final``: ``analyze`` on a run's checkpoints and ``checkpoint_cosines`` on the run
    agree, and both equal the brute-force cosine of the flattened weights."""
    from specscope.analysis.sosd import checkpoint_cosines
    from specscope.offline import analyze_into

    run_dir = tmp_path / "run"
    d = run_dir / "checkpoints"
    d.mkdir(parents=True)
    for step in (0, 10, 20):
        save_model(model, str(d / f"step_{step:07d}.safetensors"))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    df = analyze_into(d, run_dir, progress=False)
    ours = checkpoint_cosines(ss.open_run(run_dir))
    ids = ["step", "layer", "kind", "part", "name"]
    both = df[df["layer"] >= 0][ids + ["cos_w_final"]].merge(ours, on=ids, suffixes=("_analyze", "_analysis"))
    assert len(both) == len(df[df["layer"] >= 0]) == len(ours) > 0
    np.testing.assert_allclose(both["cos_w_final_analyze"], both["cos_w_final_analysis"], rtol=0, atol=1e-15)
    ckpts = ss.models.loading.resolve(d)
    first = both[both["step"] == 0].iloc[0]
    a, b = ({r.name: r for r in ck.catalog()}[first["name"]].read().double() for ck in (ckpts[0], ckpts[-1]))
    want = float((a * b).sum() / (a.norm() * b.norm()))
    assert first["cos_w_final_analyze"] == pytest.approx(want, rel=1e-12) and want < 0.99
    np.testing.assert_allclose(both[both["step"] == 20]["cos_w_final_analyze"], 1.0, rtol=1e-12)
