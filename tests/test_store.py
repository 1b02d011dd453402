import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import specscope as ss
from specscope.errors import QueryError, RunNotFoundError
from specscope.store import RunWriter
from specscope.store.files import list_parts, part_name


def _metric(step, value, layer=0):
    return {"step": step, "tokens": step * 10, "probe": "weights", "layer": layer, "kind": "q", "name": "q",
            "metric": "stable_rank", "value": value, "status": "ok"}


def test_roundtrip_flush_and_compaction(tmp_path):
    w = RunWriter(tmp_path / "r", config={"lr": 1e-3})
    for step in range(3):
        w.add("metrics", _metric(step, float(step)))
        w.add("spectra", {"step": step, "tokens": 0, "probe": "weights", "layer": 0, "kind": "q", "name": "q",
                          "quantity": "sv", "values": [3.0, 2.0, 1.0], "status": "ok"})
        w.add("scalars", {"step": step, "tokens": step * 10, "name": "loss", "value": 1.0 / (step + 1), "wall_time": 0.0})
        w.flush()
    run = ss.open_run(tmp_path / "r")
    assert len(run.metrics()) == 3  # readable while still open
    assert len(list_parts(tmp_path / "r" / "metrics")) == 3
    w.close()
    parts = list_parts(tmp_path / "r" / "metrics")
    assert [p.path.name for p in parts] == [part_name(0, 2, w.writer_id)]
    m = run.metrics()
    assert list(m.columns[:7]) == ["step", "tokens", "probe", "layer", "kind", "metric", "value"]
    assert m["value"].tolist() == [0.0, 1.0, 2.0]
    assert run.spectra(step=1)["values"].iloc[0].tolist() == [3.0, 2.0, 1.0]
    sc = run.scalars()
    assert sc["loss"].tolist() == pytest.approx([1.0, 0.5, 1 / 3]) and sc["tokens"].tolist() == [0, 10, 20]
    assert run.config == {"lr": 1e-3} and run.meta["closed"]
    # reopening a finished run appends with resume=True (see test_store_safety for the error without it)
    w2 = RunWriter(tmp_path / "r", resume=True)
    w2.add("metrics", _metric(3, 3.0))
    w2.close()
    assert run.metrics()["value"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_crash_between_compaction_and_cleanup_does_not_duplicate(tmp_path):
    w = RunWriter(tmp_path / "r")
    for step in range(3):
        w.add("metrics", _metric(step, float(step)))
        w.flush()
    d = tmp_path / "r" / "metrics"
    tables = [pq.read_table(d / part_name(i, writer=w.writer_id)) for i in range(3)]
    import pyarrow as pa
    pq.write_table(pa.concat_tables(tables), d / part_name(0, 2, w.writer_id))  # compacted, parts not yet removed
    (d / f".{part_name(3, writer=w.writer_id)}.abc.tmp").write_bytes(b"half-written garbage")
    assert ss.open_run(tmp_path / "r").metrics()["value"].tolist() == [0.0, 1.0, 2.0]


def test_old_unnamespaced_layout_still_reads(tmp_path):
    import pyarrow as pa
    from specscope.store.schema import SCHEMAS
    d = tmp_path / "r" / "metrics"
    d.mkdir(parents=True)
    rows = [{**_metric(s, float(s)), "run_id": "old"} for s in range(4)]
    pq.write_table(pa.Table.from_pylist(rows[:3], schema=SCHEMAS["metrics"]), d / part_name(0, 2))
    pq.write_table(pa.Table.from_pylist(rows[:1], schema=SCHEMAS["metrics"]), d / part_name(0))  # covered by 0-2
    pq.write_table(pa.Table.from_pylist(rows[3:], schema=SCHEMAS["metrics"]), d / part_name(3))
    assert [p.path.name for p in list_parts(d)] == [part_name(0, 2), part_name(3)]
    assert ss.open_run(tmp_path / "r").metrics()["value"].tolist() == [0.0, 1.0, 2.0, 3.0]


WRITER = textwrap.dedent("""
    import sys, torch, specscope as ss
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32))
    mon = ss.Monitor(model, sys.argv[1], probes=[ss.probes.Weights(every=1)])
    step = 0
    while True:
        mon.step(step, loss=1.0, tokens=step)   # measures and flushes every step
        print(step, flush=True)
        step += 1
""")


def test_sigkill_mid_run_leaves_a_readable_run(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE, text=True)
    last = -1
    deadline = time.time() + 120
    while last < 20 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        last = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last >= 20, "writer did not get going"
    for table in ("metrics", "spectra", "scalars"):
        for f in (run_dir / table).iterdir():
            if not f.name.startswith("."):
                pq.read_table(f)  # every visible file is a complete Parquet file
    run = ss.open_run(run_dir)
    steps = set(run.metrics()["step"])
    assert set(range(last + 1)) <= steps  # everything flushed before the last report survived
    assert len(run.spectra(step=last)) == 2
    assert run.meta["closed"] is None


def test_query_across_runs(tmp_path):
    for i in range(2):
        w = RunWriter(tmp_path / "runs" / f"r{i}")
        w.add("metrics", _metric(0, 10.0 * (i + 1)))
        w.close()
    df = ss.query("SELECT run_id, value FROM metrics ORDER BY run_id", [tmp_path / "runs"])
    assert df["run_id"].tolist() == ["r0", "r1"] and df["value"].tolist() == [10.0, 20.0]
    assert ss.query("SELECT count(*) AS n FROM runs", [tmp_path / "runs"])["n"][0] == 2
    assert ss.query("SELECT count(*) AS n FROM spectra", [tmp_path / "runs"])["n"][0] == 0
    with pytest.raises(QueryError):
        ss.query("SELECT nope FROM metrics", [tmp_path / "runs"])


def test_open_missing_run(tmp_path):
    with pytest.raises(RunNotFoundError):
        ss.open_run(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError):
        ss.open_run(tmp_path / "empty")


def test_metric_and_spectrum_rows_are_the_schema_columns_past_the_key():
    from specscope.store.rows import Measurement, metric_row, spectrum_row
    from specscope.store.schema import SCHEMAS

    key = {"run_id", "step", "tokens", "probe"}
    m = metric_row(3, "q", "blocks.3.q", "stable_rank", 2.5, "ok", part=1)
    assert m == {"layer": 3, "kind": "q", "part": 1, "name": "blocks.3.q", "metric": "stable_rank", "value": 2.5,
                 "status": "ok"}
    assert set(m) == set(SCHEMAS["metrics"].names) - key
    s = spectrum_row(0, "activation", "block0", "eig", np.array([4.0, 1.0], dtype=np.float32))
    assert s == {"layer": 0, "kind": "activation", "part": -1, "name": "block0", "quantity": "eig", "values": [4.0, 1.0],
                 "status": "ok"}
    assert set(s) == set(SCHEMAS["spectra"].names) - key and all(type(v) is float for v in s["values"])
    fail = Measurement.failure("RuntimeError: boom")
    assert fail.spectra == [] and len(fail.metrics) == 1
    row = fail.metrics[0]
    assert (row["layer"], row["kind"], row["part"], row["name"], row["metric"], row["status"]) == \
        (-1, "other", -1, "", "probe_error", "RuntimeError: boom") and np.isnan(row["value"])
    assert ss.probes.Measurement is Measurement  # the public name keeps working


def test_add_measurement_writes_exactly_its_rows(tmp_path):
    from specscope.store.rows import Measurement

    out = Measurement()
    out.add_metric(0, "q", "blocks.0.q", "stable_rank", 2.5)
    out.add_metric(1, "mlp_in", "blocks.1.mlp", "alpha_mle", float("nan"), "too few eigenvalues", part=2)
    out.add_spectrum(0, "q", "blocks.0.q", "sv", np.array([3.0, 2.0, 0.5]))
    w = RunWriter(tmp_path / "r", run_id="r")
    w.add_measurement(7, 1234, "weights", out)
    w.close()
    run = ss.open_run(tmp_path / "r")
    got = run.metrics().sort_values("layer").reset_index(drop=True)
    assert len(got) == 2
    assert got[["run_id", "step", "tokens", "probe"]].drop_duplicates().values.tolist() == [["r", 7, 1234, "weights"]]
    assert got["metric"].tolist() == ["stable_rank", "alpha_mle"] and got["part"].tolist() == [-1, 2]
    assert got["value"].iloc[0] == 2.5 and np.isnan(got["value"].iloc[1])
    assert got["status"].tolist() == ["ok", "too few eigenvalues"]
    spec = run.spectra()
    assert len(spec) == 1 and spec["step"].iloc[0] == 7 and spec["tokens"].iloc[0] == 1234
    assert (spec["probe"].iloc[0], spec["name"].iloc[0], spec["quantity"].iloc[0]) == ("weights", "blocks.0.q", "sv")
    assert list(spec["values"].iloc[0]) == [3.0, 2.0, 0.5] and spec["status"].iloc[0] == "ok"
