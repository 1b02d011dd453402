"""Reading a run store, also while a run is still writing it."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunNotFoundError
from .files import list_parts
from .meta import read_meta
from .schema import META_FILE, SCHEMAS, TABLES

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["step", "tokens", "probe", "layer", "kind", "metric", "value", "part", "name", "status", "run_id"]


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a run store: a ``meta.json`` or a directory of one of the tables (a run still being
    written may have parts before its meta)."""
    return (path / META_FILE).is_file() or any((path / t).is_dir() for t in TABLES)


def find_runs(roots: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories at or below each root (a root may itself be a run): a list of Paths, each root's runs in path
    order. A root that does not exist or is not a directory is a :class:`RunNotFoundError`."""
    found: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise RunNotFoundError(f"no such directory: {root}")
        if not root.is_dir():
            raise RunNotFoundError(f"not a directory: {root} (a run directory, or a directory holding runs)")
        if is_run_dir(root):
            found.append(root)
            continue
        for meta in sorted(root.rglob(META_FILE)):
            found.append(meta.parent)
    return found


def part_files(run_dir: Path, table: str) -> list[Path]:
    """Live part files of one table, every writer's, as a list of Paths ordered by writer and range; a part whose
    Parquet footer cannot be read (corrupt, or vanished under a compaction) is left out with a warning naming it."""
    out = []
    for p in list_parts(Path(run_dir) / table):
        try:
            pq.read_metadata(p.path)
        except FileNotFoundError:
            continue
        except Exception as exc:
            log.warning("skipping unreadable part %s: %s", p.path, exc)
            continue
        out.append(p.path)
    return out


class _Vanished(Exception):
    """A listed part was gone when read (replaced by a concurrent compaction)."""


def _read_parts(run_dir: Path, table: str, filters: list | None, raise_vanished: bool) -> list[pa.Table]:
    pieces = []
    for p in list_parts(Path(run_dir) / table):
        try:
            pieces.append(pq.read_table(p.path, schema=SCHEMAS[table], filters=filters))
        except FileNotFoundError as exc:
            if raise_vanished:
                raise _Vanished(str(p.path)) from exc
            log.warning("part %s vanished while reading; skipped", p.path)
        except Exception as exc:  # a corrupt part costs its rows, not the read
            log.warning("skipping unreadable part %s: %s", p.path, exc)
    return pieces


def read_table(run_dir: Path, table: str, filters: list | None = None) -> pa.Table:
    """All live parts of one table, every writer's, as one Arrow table with the table's schema (empty when the run
    has no rows of it; ``filters``: pyarrow row filters).

    A part that vanished between listing and reading (a compaction replaced it) makes the read list
    again, once: the compacted file, written before the parts were removed, then covers it. A
    corrupt part is skipped with a warning naming it."""
    try:
        pieces = _read_parts(run_dir, table, filters, raise_vanished=True)
    except _Vanished:
        pieces = _read_parts(run_dir, table, filters, raise_vanished=False)
    if not pieces:
        return SCHEMAS[table].empty_table()
    return pa.concat_tables(pieces)


def _with_part(df: pd.DataFrame) -> pd.DataFrame:
    """``part`` as int, -1 where a row has none (rows written before the column existed)."""
    df["part"] = df["part"].fillna(-1).astype("int32") if len(df) else df["part"].astype("int32")
    return df


class Run:
    """A run directory, opened for reading (see :func:`open_run`): ``dir`` is its Path; ``meta``, ``run_id`` and
    ``config`` read ``meta.json``; :meth:`metrics`, :meth:`spectra` and :meth:`scalars` read its tables as
    DataFrames, every call from disk (so a run still being written shows its new rows). A path that is not a run
    is a :class:`RunNotFoundError`."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise RunNotFoundError(f"no such run directory: {self.dir}")
        if not is_run_dir(self.dir):
            raise RunNotFoundError(f"not a specscope run: {self.dir}")

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    def _repr_html_(self) -> str:
        """The notebook view: probes, how far the run got, latest scalars and headline metrics with sparklines
        (:func:`specscope.store.display.run_html`), an HTML string."""
        from .display import run_html

        return run_html(self)

    @property
    def meta(self) -> dict[str, Any]:
        """The run's ``meta.json`` as a dict (run id, config, summary, writers...), read afresh; ``{}`` (with a
        warning) when missing or invalid."""
        return read_meta(self.dir)

    @property
    def run_id(self) -> str:
        """The run's id from ``meta.json``, else the directory name."""
        return self.meta.get("run_id", self.dir.name)

    @property
    def config(self) -> dict[str, Any]:
        """The run's config (``meta.json``'s ``config``, as the user or trainer passed it); ``{}`` when none."""
        return self.meta.get("config", {}) or {}

    def metrics(self, probe: str | None = None, metric: str | None = None, kind: str | None = None) -> pd.DataFrame:
        """Every scalar metric (optionally of one ``probe``, ``metric``, ``kind``): a long DataFrame with columns
        ``step``, ``tokens``, ``probe``, ``layer``, ``kind``, ``metric``, ``value`` (float64; NaN with a reason in
        ``status``), ``part`` (int, -1 unless the matrix is one of several), ``name``, ``status`` and ``run_id``,
        sorted by step, probe, layer, kind, part, metric."""
        filters = [(c, "=", v) for c, v in (("probe", probe), ("metric", metric), ("kind", kind)) if v is not None]
        df = _with_part(read_table(self.dir, "metrics", filters or None).to_pandas())
        return df[METRIC_COLUMNS].sort_values(["step", "probe", "layer", "kind", "part", "metric"],
                                              kind="stable").reset_index(drop=True)

    def spectra(
        self,
        probe: str | None = None,
        layer: int | None = None,
        kind: str | None = None,
        step: int | None = None,
    ) -> pd.DataFrame:
        """Full stored spectra (optionally filtered): a DataFrame with one row per (step, probe, layer, kind, part,
        name) and the schema's columns; ``values`` is a float64 array, descending, whose ``quantity`` is ``"sv"``
        (singular values) or ``"eig"`` (eigenvalues), and ``status`` says why a spectrum is missing or partial."""
        filters = [(c, "=", v) for c, v in (("probe", probe), ("layer", layer), ("kind", kind), ("step", step)) if v is not None]
        df = _with_part(read_table(self.dir, "spectra", filters or None).to_pandas())
        df["values"] = [np.asarray(v, dtype=np.float64) for v in df["values"]]
        return df.sort_values(["step", "probe", "layer", "kind", "part", "name"], kind="stable").reset_index(drop=True)

    def scalars(self, wide: bool = True) -> pd.DataFrame:
        """Training scalars. Wide (default): a DataFrame with one row per step, columns ``step``, ``tokens`` and one
        per scalar name (``loss``, ``val_loss``, ``lr``, ``tokens_per_s``, ... as logged; the last value of a step).
        Long (``wide=False``): the stored rows, columns ``run_id``, ``step``, ``tokens``, ``name``, ``value`` and
        ``wall_time`` (Unix time, seconds)."""
        df = read_table(self.dir, "scalars").to_pandas()
        if not wide:
            return df
        if df.empty:
            return pd.DataFrame(columns=["step", "tokens"])
        tokens = df.groupby("step")["tokens"].max()
        out = df.pivot_table(index="step", columns="name", values="value", aggfunc="last")
        out.columns.name = None
        out.insert(0, "tokens", tokens.reindex(out.index))
        return out.reset_index()


def open_run(run_dir: str | os.PathLike) -> Run:
    """Open a run directory for reading: a :class:`Run`; works while the run is still being written. A path that is
    not a run is a :class:`RunNotFoundError`."""
    return Run(run_dir)
