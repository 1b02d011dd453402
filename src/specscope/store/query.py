"""SQL across runs with DuckDB: views ``metrics``, ``spectra``, ``scalars``, ``runs``."""
from __future__ import annotations

import json
import os
from typing import Iterable

import pandas as pd

from ..errors import QueryError
from .reader import find_runs, part_files
from .schema import META_FILE, SCHEMAS, TABLES


def _empty_select(table: str) -> str:
    duck = {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "double": "DOUBLE", "list<item: double>": "DOUBLE[]"}
    cols = ", ".join(f"CAST(NULL AS {duck[str(f.type)]}) AS {f.name}" for f in SCHEMAS[table])
    return f"SELECT {cols} WHERE false"


def connect(roots: Iterable[str | os.PathLike]):
    """A DuckDB connection with one view per table over every run found under ``roots``."""
    import duckdb

    runs = find_runs(roots)
    con = duckdb.connect()
    for t in TABLES:
        files = [str(p) for r in runs for p in part_files(r, t)]
        if files:
            lst = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet([{lst}], union_by_name=true)")
        else:
            con.execute(f"CREATE VIEW {t} AS {_empty_select(t)}")
    meta = []
    for r in runs:
        m = json.loads((r / META_FILE).read_text()) if (r / META_FILE).exists() else {}
        meta.append({"run_id": m.get("run_id", r.name), "path": str(r), "created": m.get("created"), "closed": m.get("closed"),
                     "config": json.dumps(m.get("config", {}))})
    con.register("runs_df", pd.DataFrame(meta, columns=["run_id", "path", "created", "closed", "config"]))
    con.execute("CREATE VIEW runs AS SELECT * FROM runs_df")
    return con


def query(sql: str, roots: Iterable[str | os.PathLike] = ("runs",)) -> pd.DataFrame:
    """Run ``sql`` over every run under ``roots``; returns a DataFrame."""
    con = connect(roots)
    try:
        return con.execute(sql).fetchdf()
    except Exception as exc:
        raise QueryError(f"query failed: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()
