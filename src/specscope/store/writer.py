"""Append-only, crash-safe run writer.

Layout of a run directory::

    meta.json                 run id, config, start / end (written atomically)
    metrics/part-000000.parquet
    spectra/part-000000.parquet
    scalars/part-000000.parquet

Rows are buffered in memory and each ``flush()`` writes one new Parquet part per table:
written to a hidden temporary file, fsynced, then renamed into place. A part is therefore
either absent or complete, so a ``kill -9`` loses at most the rows since the last flush
and every file left behind is readable, including while the run is still writing.
``close()`` compacts the parts of each table into one file ``part-A-B.parquet`` (parts A..B);
readers ignore single parts a compacted range covers, so a crash mid-compaction is harmless.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .files import list_parts, part_name
from .schema import META_FILE, SCHEMAS, TABLES

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class RunWriter:
    """Buffers rows and appends them to a run directory as immutable Parquet parts."""

    def __init__(self, run_dir: str | os.PathLike, run_id: str | None = None, config: dict | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / META_FILE
        old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.run_id = run_id or old.get("run_id") or self.dir.resolve().name
        self.meta: dict[str, Any] = {**old, "run_id": self.run_id, "format": 1}
        self.meta.setdefault("created", time.time())
        if config is not None:
            self.meta["config"] = config
        self.meta["closed"] = None
        self._buffers: dict[str, list[dict]] = {t: [] for t in TABLES}
        self._seq: dict[str, int] = {}
        for t in TABLES:
            (self.dir / t).mkdir(exist_ok=True)
            parts = list_parts(self.dir / t)
            self._seq[t] = (max(p.last for p in parts) + 1) if parts else 0
        self.write_meta()

    def write_meta(self, **updates: Any) -> None:
        self.meta.update(updates)
        atomic_write_bytes(self.dir / META_FILE, json.dumps(self.meta, indent=1, default=str).encode())

    def add(self, table: str, row: dict) -> None:
        row.setdefault("run_id", self.run_id)
        self._buffers[table].append(row)

    def add_many(self, table: str, rows: list[dict]) -> None:
        for r in rows:
            r.setdefault("run_id", self.run_id)
        self._buffers[table].extend(rows)

    def pending(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def flush(self) -> None:
        for t in TABLES:
            rows = self._buffers[t]
            if not rows:
                continue
            table = pa.Table.from_pylist(rows, schema=SCHEMAS[t])
            seq = self._seq[t]
            atomic_write_table(self.dir / t / part_name(seq), table)
            self._seq[t] = seq + 1
            self._buffers[t] = []

    def compact(self) -> None:
        """Merge each table's parts into one file (``part-A-B.parquet``), then drop the parts."""
        for t in TABLES:
            parts = list_parts(self.dir / t)
            if len(parts) < 2:
                continue
            first, last = min(p.first for p in parts), max(p.last for p in parts)
            merged = pa.concat_tables([pq.read_table(p.path, schema=SCHEMAS[t]) for p in parts])
            atomic_write_table(self.dir / t / part_name(first, last), merged)
            for p in parts:
                if (p.first, p.last) != (first, last):
                    p.path.unlink(missing_ok=True)

    def close(self, compact: bool = True) -> None:
        self.flush()
        if compact:
            try:
                self.compact()
            except Exception as exc:  # parts stay readable; compaction is an optimization
                log.warning("compaction of %s failed: %s", self.dir, exc)
        self.write_meta(closed=time.time())
