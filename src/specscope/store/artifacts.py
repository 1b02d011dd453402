"""Analysis results kept beside a run (``RUN/artifacts/NAME/``): tables as Parquet and a verdict as JSON,
each written atomically, so `findings` and the report can show analyses that needed a live model
(e.g. pruning) without running it again."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from .files import atomic_write_bytes, atomic_write_table

ARTIFACTS = "artifacts"


def jsonable(x: Any) -> Any:
    """``x`` as plain JSON values (dicts with str keys, lists, Python scalars): numpy scalars unwrapped, tuples as
    lists, NaN / inf as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def save_artifact(run_dir: str | os.PathLike, name: str, tables: dict[str, pd.DataFrame], verdict: dict) -> Path:
    """Write ``tables`` (one Parquet file each, named by key) and ``verdict.json`` under ``RUN/artifacts/name/``,
    each atomically: returns that directory's Path."""
    d = Path(run_dir) / ARTIFACTS / name
    d.mkdir(parents=True, exist_ok=True)
    for key, df in tables.items():
        atomic_write_table(d / f"{key}.parquet", pa.Table.from_pandas(df, preserve_index=False))
    atomic_write_bytes(d / "verdict.json", json.dumps(jsonable(verdict), indent=1).encode())
    return d


def load_artifact(run_dir: str | os.PathLike, name: str) -> tuple[dict[str, pd.DataFrame], dict] | None:
    """``(tables, verdict)`` saved under ``name``: a dict of DataFrames by file stem and the verdict dict; None when
    nothing was saved there."""
    d = Path(run_dir) / ARTIFACTS / name
    if not (d / "verdict.json").is_file():
        return None
    tables = {p.stem: pd.read_parquet(p) for p in sorted(d.glob("*.parquet")) if not p.name.startswith(".")}
    return tables, json.loads((d / "verdict.json").read_text())
