"""File primitives of the run store: atomic writes, part file names, which parts are live.

A part is ``part-<writer>-<first>.parquet`` (one flush) or ``part-<writer>-<first>-<last>.parquet``
(that writer's parts ``first..last`` compacted). ``<writer>`` is the writer id (letters, digits,
``_`` and ``.``, at least one non-digit), so many writers share one run without colliding. Runs
written before writer ids existed have un-namespaced parts ``part-<first>[-<last>].parquet``; they
read as the writer ``""``.
"""
from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

_PART = re.compile(r"^part-(?:(?P<w>[A-Za-z0-9_.]*[A-Za-z_.][A-Za-z0-9_.]*)-)?(?P<a>\d{6,})(?:-(?P<b>\d{6,}))?\.parquet$")
_TMP_GLOB = ".*.tmp"


@dataclass(frozen=True)
class Part:
    """One part file: its ``path``, its writer (``""`` for the old un-namespaced layout) and the range of part
    numbers ``first..last`` (inclusive) it covers."""

    path: Path
    first: int
    last: int
    writer: str = ""


def sanitize_writer_id(writer_id: str) -> str:
    """``writer_id`` with every character outside ``[A-Za-z0-9_.]`` replaced by ``_`` (and a leading
    ``w`` where it would be all digits), so it can stand in a part file name: a non-empty str."""
    clean = re.sub(r"[^A-Za-z0-9_.]", "_", str(writer_id)) or "w"
    return clean if re.search(r"[A-Za-z_.]", clean) else "w" + clean


def part_name(first: int, last: int | None = None, writer: str = "") -> str:
    """The file name (a str, no directory) of parts ``first..last`` of ``writer`` (``""``: the old un-namespaced
    layout), part numbers zero-padded to 6 digits."""
    prefix = f"part-{writer}-" if writer else "part-"
    return f"{prefix}{first:06d}.parquet" if last is None else f"{prefix}{first:06d}-{last:06d}.parquet"


def all_parts(table_dir: Path) -> list[Part]:
    """Every part file of one table (live or covered by a compacted range), unordered: a list of :class:`Part`, empty
    when the directory is missing."""
    try:
        entries = list(table_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    parts = []
    for p in entries:
        m = _PART.match(p.name)
        if m:
            a = int(m.group("a"))
            parts.append(Part(p, a, int(m.group("b")) if m.group("b") else a, m.group("w") or ""))
    return parts


def list_parts(table_dir: Path, writer: str | None = None) -> list[Part]:
    """Live parts of one table (of every writer, or of ``writer`` only): a list of :class:`Part` ordered by writer and
    range.

    A part that a compacted range of the same writer covers is skipped, so a reader that lists
    while a compaction is replacing parts sees the rows once, either way."""
    parts = [p for p in all_parts(table_dir) if writer is None or p.writer == writer]
    ranges: dict[str, list[tuple[int, int]]] = {}
    for p in parts:
        if p.last > p.first:
            ranges.setdefault(p.writer, []).append((p.first, p.last))
    live = [p for p in parts
            if not any(a <= p.first and p.last <= b and (a, b) != (p.first, p.last) for a, b in ranges.get(p.writer, ()))]
    return sorted(live, key=lambda p: (p.writer, p.first, p.last))


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


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a hidden temporary file, fsync it, rename it onto ``path`` (removed again on failure)."""
    tmp = _tmp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the whole new one); returns None."""
    _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write ``table`` as zstd-compressed Parquet to ``path`` atomically; returns None."""
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def remove_stale_tmp(dirs: list[Path], older_than_s: float) -> int:
    """Remove hidden ``.*.tmp`` files (left by a crash mid-write) older than ``older_than_s`` seconds in ``dirs``:
    the number of files removed."""
    cutoff = time.time() - older_than_s
    removed = 0
    for d in dirs:
        for f in d.glob(_TMP_GLOB) if d.is_dir() else ():
            try:
                if f.stat().st_mtime < cutoff:
                    f.unlink()
                    removed += 1
            except OSError:
                continue
    if removed:
        log.info("removed %d stale temporary file(s) under %s", removed, dirs[0] if dirs else "")
    return removed
