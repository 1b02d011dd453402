"""Data safety of the run store: many writers, bad values, vanished directories, crashes, reads
during compaction, corrupt files, re-entering a finished run."""
import logging
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow.parquet as pq
import pytest
import torch

import specscope as ss
from specscope.errors import ConfigError
from specscope.store import RunWriter, writer as writer_mod
from specscope.store.files import list_parts
from specscope.store.reader import read_table


def _row(step, value=None, probe="p"):
    return {"step": step, "tokens": step, "probe": probe, "layer": 0, "kind": "q", "name": "q",
            "metric": "m", "value": float(step) if value is None else value, "status": "ok"}


def _write_rows(run_dir, probe, n, barrier):
    """A writer process: ``n`` metric rows under probe ``probe``, a flush every 7 rows, then close."""
    w = RunWriter(run_dir)
    barrier.wait()
    for i in range(n):
        w.add("metrics", _row(i, probe=probe))
        if i % 7 == 6:
            w.flush()
    w.close()


def test_two_writer_processes_on_one_directory_keep_every_row(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    n = 300
    procs = [ctx.Process(target=_write_rows, args=(tmp_path / "r", f"w{k}", n, barrier)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    m = ss.open_run(tmp_path / "r").metrics()
    assert len(m) == 2 * n
    for k in range(2):
        assert sorted(m[m["probe"] == f"w{k}"]["step"]) == list(range(n))
    meta = ss.open_run(tmp_path / "r").meta
    assert len(meta["writers"]) == 2 and all(e["closed"] for e in meta["writers"].values())
    assert len({p.writer for p in list_parts(tmp_path / "r" / "metrics")}) == 2  # each compacted its own


def test_ranks_share_a_run_but_not_an_id(tmp_path):
    w0, w1 = RunWriter(tmp_path / "r", rank=0), RunWriter(tmp_path / "r", rank=1)
    with pytest.raises(ConfigError, match="rank0"):
        RunWriter(tmp_path / "r", rank=0)
    w0.add("metrics", _row(0))
    w1.add("metrics", _row(1))
    w0.close()
    w1.close()
    assert sorted(ss.open_run(tmp_path / "r").metrics()["step"]) == [0, 1]


def test_bad_scalars_are_nan_with_a_warning_and_never_poison_the_buffer(tmp_path, caplog):
    model = torch.nn.Linear(4, 4)
    bad = {3: {"tokens": float("nan")}, 4: {"loss": "abc"}, 5: {"tokens": 2 ** 63}, 6: {"loss": torch.ones(3)}}
    with caplog.at_level(logging.WARNING), ss.Monitor(model, tmp_path / "r", probes=[], flush_every_s=0.0) as mon:
        for s in range(10):
            kw = {"loss": 1.0, "tokens": s, **bad.get(s, {})}
            mon.step(s, **kw)
            mon.writer.add("metrics", _row(s, value="x" if s == 4 else None))
            mon.flush()
    run = ss.open_run(tmp_path / "r")
    sc = run.scalars(wide=False)
    loss = sc[sc["name"] == "loss"].set_index("step")
    assert sorted(loss.index) == list(range(10))
    assert loss["value"].isna().tolist() == [s in (4, 6) for s in range(10)]
    assert loss["tokens"].isna().tolist() == [s in (3, 5) for s in range(10)]
    m = run.metrics().set_index("step")
    assert list(m.index) == list(range(10)) and m["value"].isna().tolist() == [s == 4 for s in range(10)]
    assert m.loc[4, "status"].startswith("invalid value") and (m.drop(4)["status"] == "ok").all()
    warned = [r.getMessage() for r in caplog.records if "invalid" in r.getMessage()]
    assert sum("scalars.tokens" in w for w in warned) == 1  # once per (table, column)
    assert any("scalars.value" in w for w in warned) and any("metrics.value" in w for w in warned)


def test_deleted_run_directory_is_recreated(tmp_path, caplog):
    w = RunWriter(tmp_path / "r")
    w.add("metrics", _row(0))
    w.flush()
    shutil.rmtree(tmp_path / "r")
    with caplog.at_level(logging.WARNING):
        for s in (1, 2):
            w.add("metrics", _row(s))
            w.flush()
    w.close()
    assert any("vanished" in r.getMessage() for r in caplog.records)
    assert ss.open_run(tmp_path / "r").metrics()["step"].tolist() == [1, 2]


def test_failed_flush_is_retried_and_the_buffer_is_bounded(tmp_path, monkeypatch):
    w = RunWriter(tmp_path / "r", max_buffer_rows=5)
    real = writer_mod.atomic_write_table

    def failing(path, table):
        raise OSError("disk full")

    monkeypatch.setattr(writer_mod, "atomic_write_table", failing)
    for s in range(8):
        w.add("metrics", _row(s))
        with pytest.raises(OSError):
            w.flush()
    assert w.pending() == 5  # bounded: the 3 oldest dropped
    monkeypatch.setattr(writer_mod, "atomic_write_table", real)
    w.flush()
    w.close()
    run = ss.open_run(tmp_path / "r")
    assert run.metrics()["step"].tolist() == [3, 4, 5, 6, 7]
    assert run.meta["writers"][w.writer_id]["rows_dropped"]["metrics"] == 3


KILLED = textwrap.dedent("""
    import sys
    from specscope.store.writer import RunWriter
    w = RunWriter(sys.argv[1])
    i = 0
    while True:
        for _ in range(5):
            w.add("metrics", {"step": i, "tokens": i, "probe": "p", "layer": 0, "kind": "q", "name": "q",
                              "metric": "m", "value": float(i), "status": "ok"})
            i += 1
        w.flush()
        print(i, flush=True)   # rows 0..i-1 are on disk
""")


def test_sigkill_at_a_random_point_loses_at_most_unflushed_rows(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for it in range(3):
        run_dir = tmp_path / f"run{it}"
        proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
        target = rng.randint(1, 40)
        flushed = 0
        for _ in range(target):
            line = proc.stdout.readline()
            if not line:
                break
            flushed = int(line)
        time.sleep(rng.random() * 0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert flushed > 0, "writer did not get going"
        steps = ss.open_run(run_dir).metrics()["step"].tolist()
        assert steps == list(range(len(steps))) and len(steps) >= flushed  # no loss of flushed rows, no duplicates


def test_reads_during_close_see_every_flushed_row(tmp_path):
    w = RunWriter(tmp_path / "r")
    n = 0
    for _ in range(60):
        for _ in range(20):
            w.add("metrics", _row(n))
            n += 1
        w.flush()
    seen = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            seen.append(read_table(tmp_path / "r", "metrics").num_rows)
        seen.append(read_table(tmp_path / "r", "metrics").num_rows)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)
    w.close()
    done.set()
    t.join(60)
    assert len(seen) >= 2 and set(seen) == {n}
    assert len(list_parts(tmp_path / "r" / "metrics")) == 1


def test_corrupt_part_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    w = RunWriter(tmp_path / "r")
    w.add("metrics", _row(0))
    w.close()
    bad = tmp_path / "r" / "metrics" / "part-other.1.ab-000000.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with caplog.at_level(logging.WARNING):
        assert ss.open_run(tmp_path / "r").metrics()["step"].tolist() == [0]
        assert ss.query("SELECT count(*) AS n FROM metrics", [tmp_path / "r"])["n"][0] == 1
    assert any(bad.name in r.getMessage() for r in caplog.records)


def test_invalid_meta_json_reads_as_empty(tmp_path, caplog):
    w = RunWriter(tmp_path / "r")
    w.add("metrics", _row(0))
    w.close()
    (tmp_path / "r" / "meta.json").write_text("{not json")
    run = ss.open_run(tmp_path / "r")
    with caplog.at_level(logging.WARNING):
        assert run.meta == {} and run.run_id == "r" and run.config == {}
    assert any("invalid" in r.getMessage() for r in caplog.records)
    assert run.metrics()["step"].tolist() == [0]
    w2 = RunWriter(tmp_path / "r")  # a writer starts over the invalid file
    w2.close()
    assert ss.open_run(tmp_path / "r").meta["closed"]


def test_reentering_a_finished_run_needs_resume(tmp_path, caplog):
    model = torch.nn.Linear(4, 4)
    with ss.Monitor(model, tmp_path / "r", probes=[]) as mon:
        mon.step(0, loss=1.0)
    with caplog.at_level(logging.WARNING):
        mon.step(1, loss=1.0)  # after close: warned once, ignored
        mon.step(2, loss=1.0)
    assert sum("closed" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ConfigError, match="resume=True"):
        ss.Monitor(model, tmp_path / "r", probes=[])
    with pytest.raises(ConfigError, match="resume=True"):
        RunWriter(tmp_path / "r")
    with ss.Monitor(model, tmp_path / "r", probes=[], resume=True) as mon:
        mon.step(1, loss=0.5)
    assert ss.open_run(tmp_path / "r").scalars()["loss"].tolist() == [1.0, 0.5]


def test_stale_tmp_files_are_removed_at_writer_start(tmp_path):
    d = tmp_path / "r" / "metrics"
    d.mkdir(parents=True)
    old, fresh = d / ".part-x.parquet.1.tmp", d / ".part-y.parquet.2.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    RunWriter(tmp_path / "r").close()
    assert not old.exists() and fresh.exists()
    for f in d.iterdir():
        if not f.name.startswith("."):
            pq.read_table(f)
