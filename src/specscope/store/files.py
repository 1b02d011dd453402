"""Names of part files and which of them are live."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PART = re.compile(r"^part-(\d{6,})(?:-(\d{6,}))?\.parquet$")


@dataclass(frozen=True)
class Part:
    path: Path
    first: int
    last: int


def part_name(first: int, last: int | None = None) -> str:
    return f"part-{first:06d}.parquet" if last is None else f"part-{first:06d}-{last:06d}.parquet"


def list_parts(table_dir: Path) -> list[Part]:
    """Live parts of one table, in order: single parts inside a compacted range are skipped."""
    if not table_dir.is_dir():
        return []
    parts = []
    for p in table_dir.iterdir():
        m = _PART.match(p.name)
        if m:
            a = int(m.group(1))
            parts.append(Part(p, a, int(m.group(2)) if m.group(2) else a))
    ranges = [(p.first, p.last) for p in parts if p.last > p.first]
    live = []
    for p in parts:
        covered = any(a <= p.first and p.last <= b and (a, b) != (p.first, p.last) for a, b in ranges)
        if not covered:
            live.append(p)
    return sorted(live, key=lambda p: (p.first, p.last))
