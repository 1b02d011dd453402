"""What every built-in study returns, and small helpers they share."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd


@dataclass
class ExperimentResult:
    """A study's outcome: its per-run ``table``, the ``claims`` table (the paper's claim beside our
    number and a verdict), the directory holding its runs and files, and its figure (PNG path or None)."""

    table: pd.DataFrame
    claims: pd.DataFrame
    out_dir: Path
    figure: Path | None = None
    extra: dict = field(default_factory=dict)


def with_overrides(cfg, **kw):
    """``cfg`` (a dataclass) with the given fields replaced (None values ignored)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
