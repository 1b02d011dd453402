"""Append-only, crash-safe run writer; many writers may share one run.

Layout of a run directory::

    meta.json                                 run id, config, start / end, one entry per writer
    metrics/part-<writer>-000000.parquet
    spectra/part-<writer>-000000.parquet
    scalars/part-<writer>-000000.parquet

Every :class:`RunWriter` has its own writer id (``{host}.{pid}.{uuid}``, or ``rank{N}``) and writes
only parts named with it, so two scripts or every rank of a DDP job can write one run directory.
Rows are coerced to the schema when added (:mod:`.rows`) and buffered in memory; each ``flush()``
writes one new Parquet part per table: to a hidden temporary file, fsynced, then renamed into
place. A part is either absent or complete, so a ``kill -9`` loses at most the rows since the last
flush and every file left behind is readable, including while the run is still writing. A failed
flush keeps its rows for the next one; the buffer is bounded (``max_buffer_rows`` per table, the
oldest dropped and counted in ``meta.json``). ``close()`` compacts this writer's parts into one file
``part-<writer>-A-B.parquet``, written before the parts are removed; readers ignore parts a
compacted range covers, so a crash or a read mid-compaction is harmless.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError
from .files import all_parts, atomic_write_bytes, atomic_write_table, list_parts, part_name, remove_stale_tmp, sanitize_writer_id
from .meta import read_meta, update_meta
from .rows import Measurement, RowCoercer
from .schema import META_FILE, SCHEMAS, TABLES

__all__ = ["NullWriter", "RunWriter", "atomic_write_bytes", "atomic_write_table"]

log = logging.getLogger(__name__)

MAX_BUFFER_ROWS = 1_000_000
STALE_TMP_S = 600.0


def default_writer_id(rank: int | None = None) -> str:
    """``rank{N}`` for a rank, else ``{host}.{pid}.{8 hex}`` (unique per writer)."""
    if rank is not None:
        return f"rank{int(rank)}"
    return sanitize_writer_id(f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


class RunWriter:
    """Buffers rows and appends them to a run directory as immutable Parquet parts.

    ``resume=True`` appends to a run that was already finished (closed); without it, such a
    directory raises :class:`~specscope.errors.ConfigError`, so re-running a script cannot silently
    duplicate rows. Writers that are live together (DDP ranks) need no flag.
    """

    def __init__(self, run_dir: str | os.PathLike, run_id: str | None = None, config: dict | None = None,
                 resume: bool = False, writer_id: str | None = None, rank: int | None = None,
                 max_buffer_rows: int = MAX_BUFFER_ROWS):
        self.dir = Path(run_dir)
        old = read_meta(self.dir)
        if old.get("closed") is not None and not resume:
            raise ConfigError(f"{self.dir} already holds a finished run; pass resume=True to append to it, "
                              "or use a new directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer_id = sanitize_writer_id(writer_id) if writer_id else default_writer_id(rank)
        self._chosen_id = writer_id is not None or rank is not None  # a generated id is unique: no lock needed
        self._lock_file = self._claim_writer_id()
        self.run_id = run_id or old.get("run_id") or self.dir.resolve().name
        self.max_buffer_rows = int(max_buffer_rows)
        self._rows = RowCoercer()
        self._buffers: dict[str, list[dict]] = {t: [] for t in TABLES}
        self._dropped: dict[str, int] = {t: 0 for t in TABLES}
        self._drop_warned: set[str] = set()
        self._dropped_written: dict[str, int] = dict(self._dropped)
        self._seq: dict[str, int] = {}
        self._closed = False
        remove_stale_tmp([self.dir] + [self.dir / t for t in TABLES], STALE_TMP_S)
        for t in TABLES:
            (self.dir / t).mkdir(exist_ok=True)
            mine = [p for p in all_parts(self.dir / t) if p.writer == self.writer_id]
            self._seq[t] = (max(p.last for p in mine) + 1) if mine else 0
        self._meta_updates: dict[str, Any] = {"run_id": self.run_id, "format": 2, "closed": None}
        if "created" not in old:
            self._meta_updates["created"] = time.time()
        if config is not None:
            self._meta_updates["config"] = config
        self._entry: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                                       "closed": None, "rank": rank}
        self.meta: dict[str, Any] = {}
        self.write_meta()

    def _claim_writer_id(self):
        """Hold ``.writer-<id>.lock`` for the writer's life when the id was given (a rank): a second live
        writer with the same id is refused."""
        if not self._chosen_id:
            return None
        try:
            import fcntl
        except ImportError:
            return None
        f = open(self.dir / f".writer-{self.writer_id}.lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise ConfigError(f"another live writer of {self.dir} uses the writer id {self.writer_id!r}; "
                              "give each writer its own id (or rank)") from None
        return f

    def _release_writer_id(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def write_meta(self, **updates: Any) -> None:
        """Merge ``updates`` (and everything this writer set before) into the shared ``meta.json``."""
        self._meta_updates.update(updates)
        self._entry["rows_dropped"] = dict(self._dropped) if any(self._dropped.values()) else None
        self.meta = update_meta(self.dir, self._meta_updates, self.writer_id, self._entry)

    def add(self, table: str, row: dict) -> None:
        """Buffer one row (coerced to ``table``'s schema; never raises on a bad value)."""
        self.add_many(table, [row])

    def add_many(self, table: str, rows: list[dict]) -> None:
        """Buffer rows (each coerced to ``table``'s schema; never raises on a bad value)."""
        buf = self._buffers[table]
        for r in rows:
            row = self._rows.coerce(table, r)
            if row.get("run_id") is None:
                row["run_id"] = self.run_id
            buf.append(row)
        over = len(buf) - self.max_buffer_rows
        if over > 0:
            del buf[:over]
            self._dropped[table] += over
            if table not in self._drop_warned:
                log.error("run store buffer of %s is full (%d rows, flushes failing?): dropping the oldest rows",
                          table, self.max_buffer_rows)
                self._drop_warned.add(table)

    def add_measurement(self, step: int, tokens: int | None, probe: str, measurement: Measurement) -> None:
        """Buffer every metric and spectrum row of ``measurement`` under ``step``, ``tokens`` and the
        probe's name ``probe`` (coerced like :meth:`add_many`; never raises on a bad value)."""
        key = {"step": step, "tokens": tokens, "probe": probe}
        self.add_many("metrics", [{**key, **row} for row in measurement.metrics])
        self.add_many("spectra", [{**key, **row} for row in measurement.spectra])

    def pending(self) -> int:
        """Rows buffered and not yet written."""
        return sum(len(b) for b in self._buffers.values())

    def _ensure_dirs(self) -> None:
        """Recreate the run directory (and rewrite meta) if it was deleted under a live run."""
        if all((self.dir / t).is_dir() for t in TABLES) and (self.dir / META_FILE).is_file():
            return
        log.warning("run directory %s (or part of it) vanished; recreating it", self.dir)
        for t in TABLES:
            (self.dir / t).mkdir(parents=True, exist_ok=True)
        self._release_writer_id()
        self._lock_file = self._claim_writer_id()
        self.write_meta()

    def flush(self) -> None:
        """Write one part per table with buffered rows; a table whose write fails keeps its rows for the
        next flush (the first error is re-raised after every table was tried)."""
        first_error: Exception | None = None
        try:
            self._ensure_dirs()
        except Exception as exc:
            first_error = exc
        for t in TABLES:
            rows = self._buffers[t]
            if not rows:
                continue
            try:
                table = pa.Table.from_pylist(rows, schema=SCHEMAS[t])
                seq = self._seq[t]
                atomic_write_table(self.dir / t / part_name(seq, writer=self.writer_id), table)
            except Exception as exc:  # disk full, directory gone...: keep the rows, retry next flush
                log.error("run store: writing %d %s rows to %s failed (kept for the next flush): %s", len(rows), t, self.dir, exc)
                first_error = first_error or exc
                continue
            self._seq[t] = seq + 1
            self._buffers[t] = []
        if self._dropped != self._dropped_written and first_error is None:
            log.error("run store %s: rows dropped from full buffers so far: %s", self.dir, self._dropped)
            self.write_meta()
            self._dropped_written = dict(self._dropped)
        if first_error is not None:
            raise first_error

    def compact(self) -> None:
        """Merge this writer's parts of each table into one file (``part-<writer>-A-B.parquet``), written
        before the parts are removed."""
        for t in TABLES:
            parts = list_parts(self.dir / t, writer=self.writer_id)
            if len(parts) < 2:
                continue
            first, last = min(p.first for p in parts), max(p.last for p in parts)
            merged = pa.concat_tables([pq.read_table(p.path, schema=SCHEMAS[t]) for p in parts])
            atomic_write_table(self.dir / t / part_name(first, last, self.writer_id), merged)
            for p in parts:
                if (p.first, p.last) != (first, last):
                    p.path.unlink(missing_ok=True)
            for p in all_parts(self.dir / t):  # parts already covered by an older compaction of ours
                if p.writer == self.writer_id and first <= p.first and p.last <= last and (p.first, p.last) != (first, last):
                    p.path.unlink(missing_ok=True)

    def close(self, compact: bool = True) -> None:
        """Flush, compact this writer's parts (optional) and mark the run closed; idempotent."""
        if self._closed:
            return
        try:
            self.flush()
            if compact:
                try:
                    self.compact()
                except Exception as exc:  # parts stay readable; compaction is an optimization
                    log.warning("compaction of %s failed: %s", self.dir, exc)
            now = time.time()
            self._entry["closed"] = now
            self.write_meta(closed=now)
        finally:
            self._closed = True
            self._release_writer_id()


class NullWriter:
    """The writer of a rank that does not write (every rank of a distributed job but rank 0): the methods of
    :class:`RunWriter`, each doing nothing; ``dir`` is the run directory rank 0 writes."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.writer_id = None

    def write_meta(self, **updates: Any) -> None:
        """Nothing (rank 0 writes ``meta.json``)."""

    def add(self, table: str, row: dict) -> None:
        """Nothing (rank 0 writes the rows)."""

    def add_many(self, table: str, rows: list[dict]) -> None:
        """Nothing (rank 0 writes the rows)."""

    def add_measurement(self, step: int, tokens: int | None, probe: str, measurement: Measurement) -> None:
        """Nothing (rank 0 writes the rows)."""

    def pending(self) -> int:
        """0: nothing is buffered here."""
        return 0

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self, compact: bool = True) -> None:
        """Nothing to close."""
