"""The HF Trainer and Lightning callbacks under torchrun (two gloo ranks on the CPU), the user's code unchanged.

The workers in ``tests/dist/`` train the small GPT-2 of ``tests/dist/worker.py`` with all four probes, once in
one process and once on two ranks with the same global batches; the run stores must hold the same rows, each
once, with the same values (1e-3 relative), as the distributed monitor promises.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import specscope as ss  # noqa: E402
from specscope.models.sharded import FSDP1, unsupported_sharding  # noqa: E402

DIST = Path(__file__).parent / "dist"
SRC = Path(__file__).parent.parent / "src"
METRIC_KEY = ["step", "probe", "layer", "kind", "name", "metric"]
SPECTRUM_KEY = ["step", "probe", "layer", "kind", "name", "part", "quantity"]


def _train(worker: str, mode: str, out: Path) -> str:
    """Run ``tests/dist/<worker> mode out`` (two ranks under torchrun unless ``mode == "single"``); its output."""
    script = [str(DIST / worker), mode, str(out)]
    launch = [] if mode == "single" else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    proc = subprocess.run([sys.executable, *launch, *script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _keyed(frame, key):
    """``frame`` indexed by ``key`` (None -> -1 so that missing parts compare), after checking each key is once."""
    frame = frame.copy()
    frame[key] = frame[key].astype(object).where(frame[key].notna(), -1)
    assert not frame.duplicated(key).any(), frame[frame.duplicated(key, keep=False)]
    return frame.set_index(key).sort_index()


def _close(a, b) -> np.ndarray:
    """Elementwise: equal to 1e-3 relative, or both NaN."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.isclose(a, b, rtol=1e-3, atol=0.0) | (np.isnan(a) & np.isnan(b))


def assert_same_run(one: Path, two: Path, tokens: bool = False) -> None:
    """The two run stores hold the same metric and spectrum rows, each once, with the same statuses and values
    (1e-3 relative, NaN == NaN), and the same training loss at every step."""
    a, b = ss.open_run(one), ss.open_run(two)
    ma, mb = _keyed(a.metrics(), METRIC_KEY), _keyed(b.metrics(), METRIC_KEY)
    assert set(ma.index) == set(mb.index) and len(ma) > 1000
    mb = mb.loc[ma.index]
    assert (ma["status"] == mb["status"]).all()
    bad = ~_close(ma["value"], mb["value"])
    assert not bad.any(), ma[bad].join(mb[bad][["value"]], rsuffix="_two")[["value", "value_two"]]
    if tokens:
        assert (ma["tokens"] == mb["tokens"]).all()
    sa, sb = _keyed(a.spectra(), SPECTRUM_KEY), _keyed(b.spectra(), SPECTRUM_KEY)
    assert set(sa.index) == set(sb.index) and len(sa) > 50
    for key, x in sa["values"].items():
        y = sb.loc[key, "values"]
        assert len(x) == len(y) and _close(x, y).all(), key
    loss = lambda r: r.scalars(wide=False).query("name == 'loss'").set_index("step")["value"].sort_index()
    la, lb = loss(a), loss(b)
    assert la.index.tolist() == lb.index.tolist() == list(range(1, 7)) and _close(la, lb).all()


@pytest.fixture(scope="module")
def lightning_single(tmp_path_factory):
    pytest.importorskip("lightning")
    out = tmp_path_factory.mktemp("lightning_single")
    _train("lightning_worker.py", "single", out)
    return out / "specscope"


def test_hf_trainer_under_ddp_equals_one_process(tmp_path):
    _train("hf_worker.py", "single", tmp_path / "single")
    _train("hf_worker.py", "ddp", tmp_path / "ddp")
    assert_same_run(tmp_path / "single" / "specscope", tmp_path / "ddp" / "specscope", tokens=True)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_lightning_under_torchrun_equals_one_process(tmp_path, lightning_single, mode):
    _train("lightning_worker.py", mode, tmp_path)
    assert_same_run(lightning_single, tmp_path / "specscope")


def test_lightning_fsdp1_is_refused_not_measured(tmp_path):
    pytest.importorskip("lightning")
    said = _train("lightning_worker.py", "fsdp1", tmp_path)
    assert said.count(f"specscope: {FSDP1}") == 2  # one warning on each rank
    run = ss.open_run(tmp_path / "specscope")
    m = run.metrics()
    # each probe: one failure row, at its first due step, NaN, naming FSDP1
    assert sorted(m["probe"]) == ["activations", "gradients", "step_gradients", "trajectory", "weights"]
    assert (m["step"] == 0).all() and m["value"].isna().all()
    assert (m["status"] == FSDP1).all()
    assert run.spectra().empty
    assert run.scalars(wide=False).query("name == 'loss'")["step"].tolist() == list(range(1, 7))  # training went on


# FSDP1 detection and the stand-in probe, in one process ----------------------------------------


class FullyShardedDataParallel(torch.nn.Module):  # what the detection reads: the wrapper's class name
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_fsdp1_is_read_from_the_wrapper_and_the_flattened_flag(tmp_path):
    from torch.distributed.fsdp._common_utils import _set_fsdp_flattened

    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert unsupported_sharding(plain) is None
    assert unsupported_sharding(FullyShardedDataParallel(plain)) == FSDP1
    assert unsupported_sharding(torch.nn.Sequential(FullyShardedDataParallel(torch.nn.Linear(4, 4)))) == FSDP1
    assert unsupported_sharding(plain) is None  # wrapping it did not mark it
    _set_fsdp_flattened(plain[1].weight)  # what FSDP1 leaves on the parameters it flattened
    assert unsupported_sharding(plain) == FSDP1
    with ss.Monitor(plain, tmp_path, probes=[ss.probes.Weights(every=3), ss.probes.Trajectory(every=3)]) as mon:
        for s in range(7):
            mon.step(s)
    m = ss.open_run(tmp_path).metrics()
    assert sorted(m[["step", "probe"]].values.tolist()) == [[0, "trajectory"], [0, "weights"]]  # told once, at 0
    assert m["value"].isna().all() and (m["status"] == FSDP1).all()
