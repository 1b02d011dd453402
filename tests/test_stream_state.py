"""Declared state of the streams (specscope.streams.state): merge of two halves equals one pass, and the
cross-process sync over two gloo ranks equals a single process on the same data."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specscope.streams import PerSampleGradGram, RowGram, Stream, StreamingCovariance, TrajectoryWindow


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(40, 6, generator=g, dtype=torch.float64) * 3 + 1e4,  # covariance rows, large offset
            torch.randn(10, 4, 3, generator=g), torch.randn(10, 4, 5, generator=g),  # inputs, output gradients
            torch.randn(6, 50, generator=g, dtype=torch.float64))  # six update vectors


def test_halves_merge_to_one_pass():
    rows, x, d, upd = _data()
    whole = StreamingCovariance(6)
    whole.update(rows)
    a, b = StreamingCovariance(6), StreamingCovariance(6)
    a.update(rows[:17]), b.update(rows[17:])
    torch.testing.assert_close(a.merge(b).compute(), whole.compute(), rtol=1e-10, atol=0)
    assert a.count == 40
    g_whole, g_a, g_b = PerSampleGradGram(), PerSampleGradGram(), PerSampleGradGram()
    g_whole.update(x, d), g_a.update(x[:4], d[:4]), g_b.update(x[4:], d[4:])
    torch.testing.assert_close(g_a.merge(g_b).compute(), g_whole.compute(), rtol=1e-10, atol=0)
    r_a, r_b = RowGram(), RowGram()
    r_a.update(upd[:2]), r_b.update(upd[2:])
    torch.testing.assert_close(r_a.merge(r_b).compute(), upd @ upd.T, rtol=1e-10, atol=0)
    # a window over two disjoint shards of the parameters: the Grams add up to the whole vectors' Gram
    w_a, w_b = TrajectoryWindow(8, torch.float64), TrajectoryWindow(8, torch.float64)
    for v in upd:
        w_a.update(v[:20]), w_b.update(v[20:])
    torch.testing.assert_close(w_a.merge(w_b).gram, upd @ upd.T, rtol=1e-10, atol=0)
    assert len(w_a.rows) == 6 and w_a.rows[0].numel() == 20  # the rows stay the rank's own shard


def test_merge_refuses_another_class_and_unknown_reductions():
    with pytest.raises(TypeError):
        RowGram().merge(PerSampleGradGram())
    with pytest.raises(ValueError):
        Stream().add_state("x", 0, "max")
    with pytest.raises(ValueError):
        StreamingCovariance(3).merge(StreamingCovariance(4))


def test_sync_without_a_process_group_does_nothing():
    c = StreamingCovariance(6)
    c.update(_data()[0])
    before = c.compute().clone()
    assert c.sync() is c and torch.equal(c.compute(), before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows, x, d, upd = _data()
        cov = StreamingCovariance(6)
        cov.update(rows.chunk(world)[rank])
        grams = PerSampleGradGram()
        grams.update(x.chunk(world)[rank], d.chunk(world)[rank])
        window = TrajectoryWindow(8, torch.float64)
        for v in upd:
            window.update(v.chunk(world)[rank])
        cov.sync(), grams.sync(), window.sync()
        torch.save({"cov": cov.compute(), "count": cov.count, "grams": grams.compute(), "window": window.gram,
                    "shard": window.rows[0].numel()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_over_two_ranks_equals_one_process(tmp_path):
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rows, x, d, upd = _data()
    cov = StreamingCovariance(6)
    cov.update(rows)
    grams = PerSampleGradGram()
    grams.update(x, d)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["count"] == 40 and got["shard"] == 25
        torch.testing.assert_close(got["cov"], cov.compute(), rtol=1e-10, atol=0)
        torch.testing.assert_close(got["grams"], grams.compute(), rtol=1e-10, atol=0)
        torch.testing.assert_close(got["window"], upd @ upd.T, rtol=1e-10, atol=0)
