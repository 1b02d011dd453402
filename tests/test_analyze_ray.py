"""Offline analysis fanned out on Ray: the same rows as the serial path, run stores included; failed tasks and bad
options."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_model

import specscope as ss
from specscope.errors import ConfigError
from specscope.offline import analyze_into
from specscope.train import GPT, GPTConfig

ray = pytest.importorskip("ray")

CFG = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32)
RTOL = 1e-10


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from specscope.raysetup import init_ray

    init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three step-numbered safetensors checkpoints of a tiny GPT whose weights move between steps."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    model = GPT(CFG)
    for step in (0, 10, 20):
        save_model(model, str(d / f"step_{step:07d}.safetensors"))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return d


def same(serial: pd.DataFrame, fanned: pd.DataFrame) -> None:
    assert list(fanned.columns) == list(serial.columns)
    pd.testing.assert_frame_equal(fanned, serial, rtol=RTOL, atol=0)


def test_series_equals_serial_every_column(series):
    serial = ss.analyze(series, progress=False)
    fanned = ss.analyze(series, progress=False, ray=True)
    same(serial, fanned)
    assert sorted(fanned["step"].unique()) == [0, 10, 20] and (fanned["status"] == "ok").all()
    assert fanned["cos_w_final"].notna().all() and fanned["sd_variation"].notna().sum() == 2 * 14


def test_torch_series_and_kinds_equal_serial(tmp_path):
    """Torch files (read whole, ``cos_w_final`` on tensors) and a kinds filter; matrices only earlier checkpoints
    have come out (cos NaN) as in the serial path."""
    torch.manual_seed(1)
    model = GPT(CFG)
    for step in (5, 15):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 5:
            sd["extra.weight"] = torch.randn(12, 20)
        torch.save(sd, tmp_path / f"ckpt_{step}.pt")
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1).add_(0.1 * torch.randn_like(p))
    for kinds in (None, ["q", "mlp_in", "other"]):
        serial = ss.analyze(tmp_path, kinds=kinds, progress=False)
        same(serial, ss.analyze(tmp_path, kinds=kinds, progress=False, ray="local"))
    extra = serial[serial["name"] == "extra"]
    assert len(extra) == 1 and np.isnan(extra["cos_w_final"]).all() and np.isfinite(extra["stable_rank"]).all()


def test_one_file_in_chunks_equals_serial(series):
    one = series / "step_0000020.safetensors"
    serial = ss.analyze(one, progress=False, method="svd")
    same(serial, ss.analyze(one, progress=False, method="svd", ray=True))
    assert "step" not in serial.columns and len(serial) == 14


def test_run_stores_equal(series, tmp_path):
    serial = analyze_into(series, tmp_path / "serial", progress=False)
    fanned = analyze_into(series, tmp_path / "ray", progress=False, ray=True)
    same(serial, fanned)
    a, b = ss.open_run(tmp_path / "serial"), ss.open_run(tmp_path / "ray")
    keys = ["step", "probe", "layer", "kind", "part", "name"]
    ma, mb = (r.metrics().drop(columns="run_id").sort_values(keys + ["metric"]).reset_index(drop=True) for r in (a, b))
    assert not mb.duplicated(keys + ["metric"]).any() and len(mb) > 0
    pd.testing.assert_frame_equal(mb, ma, rtol=RTOL, atol=0)
    sa, sb = (r.spectra().drop(columns="run_id", errors="ignore").sort_values(keys).reset_index(drop=True) for r in (a, b))
    assert not sb.duplicated(keys).any() and len(sb) == len(serial)
    pd.testing.assert_frame_equal(sb.drop(columns="values"), sa.drop(columns="values"))
    for x, y in zip(sa["values"], sb["values"]):
        np.testing.assert_allclose(y, x, rtol=RTOL, atol=0)


def test_a_failed_task_gives_nan_rows_with_a_status(series, tmp_path):
    """A checkpoint gone between cataloging and measuring: its task fails, its matrices get NaNs and a status
    naming the error; the other checkpoints' rows are the serial ones."""
    from specscope.models.loading import resolve
    from specscope.offline import _fan_out

    import shutil

    d = tmp_path / "ckpts"
    shutil.copytree(series, d)
    ckpts = resolve(d)
    cats = [{r.name: r for r in c.catalog()} for c in ckpts]
    (d / "step_0000010.safetensors").unlink()
    got = _fan_out(ckpts, cats, "gram", None, False, True)
    assert set(got) == {(i, n) for i, cat in enumerate(cats) for n in cat}
    for (i, name), (sv, status, cos) in got.items():
        if i == 1:
            assert np.isnan(sv).all() and len(sv) == cats[1][name].rank and np.isnan(cos)
            assert status.startswith("Ray task failed (CheckpointError: ") and "no such file" in status
        else:
            assert status == "ok" and np.isfinite(sv).all() and np.isfinite(cos)


def test_bad_options_are_one_line(series):
    with pytest.raises(ConfigError, match="takes a path") as exc:
        ss.analyze(GPT(CFG), progress=False, ray=True)
    assert "\n" not in str(exc.value)
    p = subprocess.run([sys.executable, "-m", "specscope", "analyze", str(series), "--trajectory", "2", "--ray"],
                       capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "--ray goes with weight analysis" in lines[0], p.stderr


def test_missing_ray_is_one_line(monkeypatch):
    from specscope.raysetup import init_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match="needs the ray package"):
        init_ray("local")


def test_cli_joins_a_cluster_by_address(series, tmp_path):
    """``--ray ADDRESS --into RUN``: the command joins the running Ray and writes the serial path's run."""
    address = ray.get_runtime_context().gcs_address
    p = subprocess.run([sys.executable, "-m", "specscope", "analyze", str(series), "--ray", address, "--into",
                        str(tmp_path / "run"), "--format", "csv", "--out", str(tmp_path / "t.csv"), "--no-progress"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = pd.read_csv(tmp_path / "t.csv")
    want = ss.analyze(series, progress=False)
    np.testing.assert_allclose(got["alpha_mle"], want["alpha_mle"], rtol=1e-9)
    assert len(ss.open_run(tmp_path / "run").metrics(metric="stable_rank")) == len(want)
