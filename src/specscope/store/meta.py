"""``meta.json`` of a run, shared by every writer of the run.

Readers get ``{}`` (with a warning) for a missing or invalid file, never a traceback. Writers
update it by merge-on-write under an advisory lock (``.meta.lock``, ``fcntl.flock`` where the
platform has it): each write re-reads the file, applies only its own keys and its own entry under
``writers/<id>``, and replaces the file atomically, so two writers never clobber each other.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

from .files import atomic_write_bytes
from .schema import META_FILE

log = logging.getLogger(__name__)

LOCK_FILE = ".meta.lock"


def read_meta(run_dir: Path) -> dict[str, Any]:
    """The run's ``meta.json`` as a dict; ``{}`` (with a warning) if it is missing, unreadable or invalid."""
    path = Path(run_dir) / META_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return {}
    try:
        meta = json.loads(text)
    except ValueError as exc:
        log.warning("invalid %s (%s); reading it as empty", path, exc)
        return {}
    if not isinstance(meta, dict):
        log.warning("invalid %s (not a JSON object); reading it as empty", path)
        return {}
    return meta


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """A context manager that holds an exclusive advisory lock on ``path`` (created if absent) while inside; a no-op
    where ``fcntl`` is missing. Yields None."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic replace still keeps the file whole
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def update_meta(run_dir: Path, updates: dict[str, Any], writer_id: str, writer_entry: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` and this writer's ``writer_entry`` into ``meta.json``; returns the merged meta."""
    run_dir = Path(run_dir)
    with locked(run_dir / LOCK_FILE):
        meta = read_meta(run_dir)
        meta.update(updates)
        writers = meta.get("writers")
        writers = dict(writers) if isinstance(writers, dict) else {}
        writers[writer_id] = {**(writers.get(writer_id) or {}), **writer_entry}
        meta["writers"] = writers
        atomic_write_bytes(run_dir / META_FILE, json.dumps(meta, indent=1, default=str).encode())
    return meta
