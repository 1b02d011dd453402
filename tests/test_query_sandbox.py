"""The query sandbox: SELECT over the run tables works; files, COPY, ATTACH, extensions and settings are refused."""
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import specscope
import specscope as ss
from specscope.cli import main
from specscope.errors import QueryError
from specscope.store import RunWriter
from specscope.store.query import SANDBOX_CONFIG, connect


def _metric(step, value, layer=0):
    return {"step": step, "tokens": step * 10, "probe": "weights", "layer": layer, "kind": "q", "name": "q",
            "metric": "stable_rank", "value": value, "status": "ok"}


@pytest.fixture
def root(tmp_path):
    """Two closed runs (r0, r1) with metrics and scalars, and an empty run, under ``tmp_path/runs``."""
    for i in range(2):
        w = RunWriter(tmp_path / "runs" / f"r{i}", config={"lr": 0.1 * (i + 1)})
        for step in range(3):
            w.add("metrics", _metric(step, 10.0 * (i + 1) + step))
            w.add("scalars", {"step": step, "tokens": step * 10, "name": "loss", "value": 1.0 / (step + 1), "wall_time": 0.0})
        w.close()
    RunWriter(tmp_path / "runs" / "empty").close()
    return tmp_path / "runs"


def _refused(sql, root):
    with pytest.raises(QueryError) as info:
        ss.query(sql, [root])
    msg = str(info.value)
    assert msg.startswith("query refused: ") and "\n" not in msg, msg
    return msg


def test_file_reads_refused(root, tmp_path):
    csv = tmp_path / "secret.csv"
    csv.write_text("a,b\n1,2\n")
    outside = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"a": [1]}), outside)
    for sql in [f"SELECT * FROM read_csv('{csv}')", f"SELECT * FROM read_parquet('{outside}')", f"SELECT * FROM '{outside}'",
                f"SELECT * FROM glob('{tmp_path}/*')", "SELECT * FROM read_text('/etc/passwd')",
                f"SELECT * FROM metrics, read_json('{csv}')"]:
        msg = _refused(sql, root)
        assert "metrics, spectra, scalars, runs" in msg


def test_copy_and_export_refused_and_write_nothing(root, tmp_path):
    out = tmp_path / "out.csv"
    assert "COPY" in _refused(f"COPY (SELECT * FROM metrics) TO '{out}'", root)
    _refused(f"COPY metrics FROM '{tmp_path}/x.csv'", root)
    _refused(f"EXPORT DATABASE '{tmp_path / 'exp'}'", root)
    assert not out.exists() and not (tmp_path / "exp").exists()


def test_attach_install_load_refused(root, tmp_path):
    assert "attaching" in _refused(f"ATTACH '{tmp_path / 'db.duckdb'}' AS other", root)
    assert not (tmp_path / "db.duckdb").exists()
    assert "extensions" in _refused("INSTALL httpfs", root)
    assert "extensions" in _refused("LOAD httpfs", root)


def test_settings_refused(root):
    for sql in ["SET enable_external_access=true", "RESET enable_external_access", "SET lock_configuration=false",
                "PRAGMA enable_profiling", f"IMPORT DATABASE '{root}'", "SELECT 1; SET enable_external_access=true"]:
        _refused(sql, root)


def test_other_statements_refused(root):
    assert "CREATE" in _refused("CREATE TABLE x AS SELECT 1", root)
    _refused("DROP VIEW metrics", root)


def test_sandbox_settings_enforced_by_duckdb(root, tmp_path):
    """Without the statement pre-check the engine itself refuses: the settings are the enforcement."""
    import duckdb

    csv = tmp_path / "secret.csv"
    csv.write_text("a\n1\n")
    con = connect([root])
    try:
        settings = dict(con.execute("SELECT name, value FROM duckdb_settings()").fetchall())
        for name, value in SANDBOX_CONFIG.items():
            assert settings[name] == str(value).lower(), name
        for sql in [f"SELECT * FROM read_csv('{csv}')", f"COPY metrics TO '{tmp_path / 'o.csv'}'", "LOAD httpfs",
                    f"ATTACH '{tmp_path / 'a.duckdb'}'"]:
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access=true")
        assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 6
    finally:
        con.close()
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "a.duckdb").exists()


def test_python_frames_not_scanned(root):
    secret_frame = pa.table({"s": [1]})  # noqa: F841 - a replacement scan would find it by name
    with pytest.raises(QueryError, match="query failed"):
        ss.query("SELECT * FROM secret_frame", [root])


def test_select_works(root):
    df = ss.query("SELECT run_id, step, value FROM metrics ORDER BY run_id, step", [root])
    assert df["run_id"].tolist() == ["r0"] * 3 + ["r1"] * 3
    assert df["value"].tolist() == [10.0, 11.0, 12.0, 20.0, 21.0, 22.0]
    j = ss.query("""SELECT m.run_id, m.step, m.value, s.value AS loss,
                           avg(m.value) OVER (PARTITION BY m.run_id) AS mean_by_run
                    FROM metrics m JOIN scalars s USING (run_id, step) JOIN runs r USING (run_id)
                    WHERE s.name = 'loss' ORDER BY m.run_id, m.step""", [root])
    assert len(j) == 6 and j["loss"].tolist()[:3] == [1.0, 0.5, 1.0 / 3]
    assert j["mean_by_run"].tolist() == [11.0] * 3 + [21.0] * 3
    runs = ss.query("SELECT run_id, json_extract(config, '$.lr')::DOUBLE AS lr FROM runs ORDER BY run_id", [root])
    assert runs["run_id"].tolist() == ["empty", "r0", "r1"] and runs["lr"].tolist()[1:] == [0.1, 0.2]
    assert ss.query("SELECT count(*) AS n FROM spectra", [root])["n"][0] == 0
    pivot = ss.query("PIVOT (SELECT run_id, step, value FROM metrics) ON run_id USING sum(value) ORDER BY step", [root])
    assert pivot["r1"].tolist() == [20.0, 21.0, 22.0]


def test_empty_run_has_typed_empty_tables(root):
    for table, cols in [("metrics", ["run_id", "step", "value"]), ("spectra", ["values", "quantity"]), ("scalars", ["name", "wall_time"])]:
        df = ss.query(f"SELECT * FROM {table}", [root / "empty"])
        assert len(df) == 0 and set(cols) <= set(df.columns)
    assert ss.query("SELECT count(*) AS n, sum(value) AS s FROM metrics", [root / "empty"])["n"][0] == 0


def test_cli_refusal_is_one_line_exit_2(root, tmp_path, capsys):
    csv = tmp_path / "secret.csv"
    csv.write_text("a\n1\n")
    for sql in [f"SELECT * FROM read_csv('{csv}')", f"COPY metrics TO '{tmp_path / 'o.csv'}'", "INSTALL httpfs",
                "SET enable_external_access=true"]:
        assert main(["query", sql, "--runs", str(root)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "query refused" in err and "Traceback" not in err
    assert main(["query", "SELECT count(*) AS n FROM metrics", "--runs", str(root), "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "6"]


def test_cli_subprocess_refusal(root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(specscope.__file__).parents[1])}
    p = subprocess.run([sys.executable, "-m", "specscope", "query", "SELECT * FROM read_text('/etc/passwd')", "--runs", str(root)],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "query refused" in lines[0] and "Traceback" not in p.stderr


def test_invalid_meta_json_does_not_break_a_query(tmp_path):
    from specscope.store.writer import RunWriter

    w = RunWriter(tmp_path / "r")
    w.add("scalars", {"step": 1, "tokens": None, "name": "loss", "value": 2.0, "wall_time": 0.0})
    w.close()
    (tmp_path / "r" / "meta.json").write_text("{not json")
    df = ss.query("SELECT run_id, count(*) AS n FROM scalars GROUP BY run_id", [tmp_path])
    assert df["n"].tolist() == [1]
