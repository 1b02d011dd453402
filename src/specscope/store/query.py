"""SQL across runs with DuckDB, sandboxed: views ``metrics``, ``spectra``, ``scalars``, ``runs`` and nothing else.

The run tables are read with pyarrow in Python (:func:`~specscope.store.reader.read_table`) and registered as Arrow
tables, so DuckDB itself never needs the file system. The connection is opened with external access off, extension
install/autoload off, Python replacement scans off and the configuration locked (:data:`SANDBOX_CONFIG`): that is
the enforcement, and file functions (``read_csv``, ``read_parquet``, ``glob``, ...), ``COPY``, ``ATTACH``,
``EXPORT DATABASE``, ``INSTALL``/``LOAD`` and ``SET``/``PRAGMA`` all fail inside DuckDB. A statement-type check
before execution (:func:`_check_statements`) only makes the refusal message clearer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd

from ..errors import QueryError
from .reader import find_runs, read_table
from .meta import read_meta
from .schema import SCHEMAS, TABLES

if TYPE_CHECKING:
    import duckdb

#: DuckDB settings applied when the connection opens; ``lock_configuration`` forbids any later ``SET``/``PRAGMA``.
SANDBOX_CONFIG: dict[str, Any] = {
    "enable_external_access": False,  # no file system or network: file functions, COPY, ATTACH, EXPORT, INSTALL
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "python_enable_replacements": False,  # a table name never resolves to a DataFrame in the caller's Python frames
    "lock_configuration": True,
}

_ONLY = "only SELECT over the run tables " + ", ".join((*TABLES, "runs"))
#: statement types a query may hold (MULTI: PIVOT, which DuckDB splits into several statements)
_ALLOWED = frozenset({"SELECT", "EXPLAIN", "MULTI"})
_REFUSED_WHAT = {
    "COPY": "writing or reading files (COPY)",
    "COPY_DATABASE": "copying databases",
    "EXPORT": "writing files (EXPORT DATABASE)",
    "ATTACH": "attaching databases",
    "DETACH": "detaching databases",
    "LOAD": "installing or loading extensions",
    "SET": "changing settings (SET, RESET, USE)",
    "VARIABLE_SET": "changing settings (SET VARIABLE)",
    "PRAGMA": "PRAGMA and IMPORT DATABASE",
}


def _refused(what: str) -> QueryError:
    return QueryError(f"query refused: {what} is not allowed ({_ONLY})")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_statements(sql: str) -> None:
    """Refuse, with a clear message, any statement that is not a query (the sandbox settings refuse them anyway)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {_first_line(exc)}") from exc
    for st in statements:
        kind = st.type.name
        if kind not in _ALLOWED:
            raise _refused(_REFUSED_WHAT.get(kind, f"a {kind} statement"))


def _runs_frame(runs: list[Path]) -> pd.DataFrame:
    """One row per run: id, path, created/closed times and its config as JSON."""
    meta = []
    for r in runs:
        m = read_meta(r)
        meta.append({"run_id": m.get("run_id", r.name), "path": str(r), "created": m.get("created"), "closed": m.get("closed"),
                     "config": json.dumps(m.get("config", {}))})
    return pd.DataFrame(meta, columns=["run_id", "path", "created", "closed", "config"])


def connect(roots: Iterable[str | os.PathLike]) -> duckdb.DuckDBPyConnection:
    """A sandboxed DuckDB connection (``duckdb.DuckDBPyConnection``; the caller closes it) holding the tables of every
    run found under ``roots`` as the views ``metrics``, ``spectra``, ``scalars`` and ``runs`` (see module docstring).

    Every table is read into memory first (parts that vanish under a concurrent compaction are skipped, as in
    :func:`~specscope.store.reader.read_table`); a run store with no rows of a table gives an empty table with the
    table's columns.
    """
    import duckdb
    import pyarrow as pa

    runs = find_runs(roots)
    con = duckdb.connect(config=dict(SANDBOX_CONFIG))
    for t in TABLES:
        con.register(t, pa.concat_tables([read_table(r, t) for r in runs]) if runs else SCHEMAS[t].empty_table())
    con.register("runs", _runs_frame(runs))
    return con


def query(sql: str, roots: Iterable[str | os.PathLike] = ("runs",)) -> pd.DataFrame:
    """Run ``sql`` (SELECT only, sandboxed) over every run under ``roots``; returns the result as a DataFrame (columns
    as the query names them; the views' columns are those of :mod:`specscope.store.schema`, plus ``runs`` with
    ``run_id``, ``path``, ``created``, ``closed`` and ``config`` as JSON text).

    Raises :class:`~specscope.errors.QueryError` with a one-line message when the SQL is invalid, fails, or tries
    anything beyond reading the run tables (files, COPY, ATTACH, extensions, settings).
    """
    import duckdb

    _check_statements(sql)
    con = connect(roots)
    try:
        return con.execute(sql).fetchdf()
    except duckdb.PermissionException as exc:
        raise _refused("access to files, the network or extensions") from exc
    except Exception as exc:
        if "configuration has been locked" in str(exc):
            raise _refused("changing settings") from exc
        raise QueryError(f"query failed: {_first_line(exc)}") from exc
    finally:
        con.close()
