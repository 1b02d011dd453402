"""Distributed measuring: the same run store from DDP and FSDP2 (torchrun, 2 ranks, gloo on the CPU) as from one
process on the same global batches; agreed failures and a lost rank; the pieces the ranks split work with."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import specscope as ss
from specscope.measure.common import pool_len, rank_share
from specscope.models.sharded import shard_rows
from specscope.probes.sharding import owned_coordinates
from specscope.streams import CountSketch
from specscope.streams.dist import Dist
from specscope.store.writer import NullWriter

sys.path.insert(0, str(Path(__file__).parent / "dist"))
from compare import assert_same_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist" / "worker.py"


def _run(args: list[str], ranks: int = 0, timeout: float = 180) -> subprocess.CompletedProcess:
    """``worker.py args`` in one process (``ranks=0``) or under torchrun with ``ranks`` processes; must exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    launch = [sys.executable] if not ranks else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", str(ranks)]
    done = subprocess.run(launch + [str(WORKER)] + args, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "single"
    _run(["single", str(out)])
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_write_the_single_process_rows(single, tmp_path, mode):
    out = tmp_path / mode
    _run([mode, str(out)], ranks=2)
    counts = assert_same_rows(str(single), str(out))
    assert counts["metrics"] > 1000 and counts["spectra"] > 50
    meta = json.loads((out / "meta.json").read_text())
    assert meta["distributed"]["world"] == 2
    assert len(list((out / "metrics").glob("part-*.parquet"))) == 1  # one writer: rank 0
    probes = set(ss.open_run(str(out)).metrics().probe)
    assert probes == {"weights", "activations", "gradients", "trajectory", "step_gradients"}


def test_sketched_trajectory_over_fsdp_shards_equals_one_process(tmp_path):
    _run(["single", str(tmp_path / "one"), "sketch"])
    _run(["fsdp", str(tmp_path / "two"), "sketch"], ranks=2)
    assert_same_rows(str(tmp_path / "one"), str(tmp_path / "two"))


def test_per_sample_gradients_by_backward_loop_under_ddp_equal_one_process(tmp_path):
    _run(["single", str(tmp_path / "one"), "loop"])
    _run(["ddp", str(tmp_path / "two"), "loop"], ranks=2)
    assert_same_rows(str(tmp_path / "one"), str(tmp_path / "two"))


def test_a_probe_failing_on_one_rank_fails_on_every_rank_and_the_rest_measure(single, tmp_path):
    out = tmp_path / "fail"
    _run(["ddp", str(out), "fail"], ranks=2)
    m = ss.open_run(str(out)).metrics()
    acts = m[m.probe == "activations"]
    assert set(acts.metric) == {"probe_error"} and len(acts) == 4  # steps 0, 2, 4, 6: once each
    assert acts.status.str.contains("rank 1: RuntimeError: forward failed on this rank").all()
    others = m[m.probe != "activations"]
    ref = ss.open_run(str(single)).metrics()
    assert len(others) == len(ref[ref.probe != "activations"])


def test_a_rank_that_stops_stepping_costs_one_timeout_not_a_hang(tmp_path):
    out = tmp_path / "lost"
    _run(["ddp", str(out), "lost"], ranks=2, timeout=120)
    m = ss.open_run(str(out)).metrics()
    before = m[m.step <= 2]
    assert not before.status.str.contains("distributed").any() and len(before) > 500  # measured while both ranks stepped
    after = m[m.step >= 4]
    assert set(after.metric) == {"probe_error"} and len(after) == 10  # 5 probes x steps 4, 6
    assert after.status.str.contains("distributed measuring stopped").all()


def test_a_run_store_rank_0_cannot_open_fails_every_rank_at_once(single, tmp_path):
    import shutil
    import time

    out = tmp_path / "closed"
    shutil.copytree(single, out)  # a finished run: opening it without resume is a ConfigError
    t0 = time.monotonic()
    said = _run(["ddp", str(out), "closed"], ranks=2).stdout
    assert said.count("CONFIGERROR rank") == 2 and "already holds a finished run" in said
    assert time.monotonic() - t0 < 50  # the monitor's timeout is 60 s: no rank waited for it


# the pieces, in one process


def test_pool_batches_are_dealt_to_ranks_once_each_and_pads_even_out_forward_passes():
    pool = torch.arange(23 * 2).reshape(23, 2)
    for world in (1, 2, 3, 5, 8, 30):
        got, passes = [], []
        for rank in range(world):
            mine, pad = rank_share(pool, 4, rank, world)
            n = 0 if mine is None else pool_len(mine)
            got += [] if mine is None else mine[:, 0].tolist()
            passes.append(-(-n // 4) + (pad is not None))
            if pad is not None:
                assert torch.equal(pad, pool[:4])
        assert sorted(got) == list(range(0, 46, 2)), world
        assert len(set(passes)) == 1, (world, passes)  # every rank runs as many forward passes
    mine, _ = rank_share(pool, 4, 1, 2)
    assert mine[:, 0].tolist() == list(range(8, 16, 2)) + list(range(24, 32, 2)) + list(range(40, 46, 2))


def test_shard_rows_follow_torch_chunk():
    for n in (1, 5, 8, 13):
        for world in (1, 2, 3, 4, 7):
            chunks = torch.arange(n).chunk(world)
            for rank in range(world):
                lo, hi = shard_rows(n, world, rank)
                want = chunks[rank].tolist() if rank < len(chunks) else []
                assert list(range(lo, hi)) == want


def test_owners_balance_the_largest_first():
    d = Dist(rank=0, world=3)
    owners = d.owners([10, 1, 1, 1, 9, 8, 1])
    load = [sum(c for c, o in zip([10, 1, 1, 1, 9, 8, 1], owners) if o == r) for r in range(3)]
    assert len({owners[0], owners[4], owners[5]}) == 3 and sorted(load) == [10, 10, 11]


def test_replicated_coordinates_partition_the_update_vector_and_sketches_add_up():
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    refs = [r for r in ss.models.catalog(model) if r.layer >= 0] or list(ss.models.catalog(model))
    whole = torch.cat([r.read().reshape(-1) for r in refs])
    sketch = CountSketch(whole.numel(), 16, seed=3)
    for world in (2, 3):
        positions, parts = [], torch.zeros(16, dtype=torch.float64)
        for rank in range(world):
            owned = owned_coordinates(model, refs, Dist(rank=rank, world=world))
            pos = torch.cat([o.positions for o in owned])
            vals = torch.cat([o.read() for o in owned])
            assert torch.equal(vals, whole[pos])  # each kept value is the whole vector's at its position
            positions += pos.tolist()
            parts += sketch(vals, pos)
        assert sorted(positions) == list(range(whole.numel()))  # every coordinate kept once
        np.testing.assert_allclose(parts.numpy(), sketch(whole).numpy(), rtol=1e-12, atol=1e-12)


def test_a_sample_view_is_sent_as_its_own_elements():
    from specscope.streams import PerSampleGradGram

    acc = PerSampleGradGram()
    acc.update(torch.randn(8, 5, 3), torch.randn(8, 5, 2))
    state = acc.state_dict()
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in state["inputs"] + state["deltas"])
    twice = acc.folded([state, state]).compute()
    g = acc.compute()
    torch.testing.assert_close(twice, torch.cat([torch.cat([g, g], 1), torch.cat([g, g], 1)]), rtol=1e-12, atol=1e-12)


def test_failures_are_said_once_per_reason_with_their_ranks():
    from specscope.streams.dist import Failure, failures_said

    assert failures_said([None, None]) == ""
    assert failures_said([None, Failure("E: x")]) == "rank 1: E: x"
    assert failures_said([Failure("E: x"), Failure("E: x"), Failure("E: y")]) == "ranks 0, 1: E: x; rank 2: E: y"
    assert failures_said([Failure("stopped", agreed=True)] * 2) == "stopped"


def test_null_writer_writes_nothing(tmp_path):
    w = NullWriter(tmp_path / "run")
    w.write_meta(a=1)
    w.add_measurement(0, None, "weights", ss.probes.Measurement())
    w.flush()
    w.close()
    assert not (tmp_path / "run").exists() and w.pending() == 0


def test_one_process_monitor_has_no_dist(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with ss.Monitor(model, tmp_path / "r", probes=[ss.probes.Weights(every=1)], distributed=True) as mon:
        mon.step(0, loss=1.0)
    assert mon.dist is None
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["distributed"] is None


def test_an_fsdp1_model_is_said_to_be_unmeasurable_at_every_measurement(tmp_path):
    class FullyShardedDataParallel(torch.nn.Module):  # FSDP1's wrapper type, as the monitor sees it
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = FullyShardedDataParallel(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    probes = [ss.probes.Weights(every=1), ss.probes.Trajectory(window=2, every=1)]
    with ss.Monitor(model, tmp_path / "r", probes=probes) as mon:
        for step in range(3):
            mon.step(step, loss=1.0)
    m = ss.open_run(str(tmp_path / "r")).metrics()
    assert set(m.metric) == {"probe_error"} and sorted(m[["step", "probe"]].values.tolist()) == [[0, "trajectory"], [0, "weights"]]
    assert m.status.str.contains("FSDP1").all()


def test_fsdp2_in_one_process_reads_its_dtensors_whole(tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 3))

    def train(model, out):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(5, 16, 6, generator=torch.Generator().manual_seed(2))
        probes = [ss.probes.Weights(every=2), ss.probes.Trajectory(window=3, every=2),
                  ss.probes.Activations(x[0], every=2, batch=4)]
        with ss.Monitor(model, out, probes=probes) as mon:
            mon.step(0)
            for step in range(1, 5):
                model(x[step]).square().mean().backward()
                opt.step()
                opt.zero_grad()
                mon.step(step)

    train(build(), tmp_path / "plain")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = build()
        fully_shard(model)
        assert any(type(p).__name__ == "DTensor" for p in model.parameters())
        train(model, tmp_path / "fsdp")
    finally:
        dist.destroy_process_group()
    m = ss.open_run(str(tmp_path / "fsdp")).metrics()
    assert (m.metric != "probe_error").all()
    assert_same_rows(str(tmp_path / "plain"), str(tmp_path / "fsdp"), rtol=1e-6)
