"""``ss.findings(run)``: the SPEC section 5 analyses that a run's data allows, each a table and a verdict."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..store.artifacts import jsonable, load_artifact
from ..store.reader import Run, open_run
from .coverage import RunContents, contents, join
from .edge import edge_analysis
from .lifecycle import depth_profiles, paper_range_sentence, profile_variants
from .sosd import sosd
from .waves import compression_waves

log = logging.getLogger(__name__)


@dataclass
class Finding:
    """One analysis of a run: its table, its verdict (``verdict["verdict"]`` the sentence, ``missing`` what the run
    lacked, ``applies`` whether the analysis produced its main result) and auxiliary tables (``extras``)."""

    name: str
    title: str
    verdict: dict[str, Any]
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def applies(self) -> bool:
        """Whether the analysis produced its main result (``verdict["applies"]``, True when absent)."""
        return bool(self.verdict.get("applies", True))


PRUNE_TITLE = "Layer importance and pruning (spectral rule vs Last-N vs random)"


def pruning_finding(run: Run, have: RunContents) -> Finding:
    """The pruning :class:`Finding`: the tables and verdict ``specscope prune RUN`` saved beside the run, or a
    finding that does not apply and says why there are none."""
    saved = load_artifact(run.dir, "pruning")
    if saved is not None:  # written by `specscope prune RUN` (it needs the live model)
        tables, verdict = saved
        return Finding("pruning", PRUNE_TITLE, {"applies": True, "missing": [], **verdict},
                       tables.get("summary", pd.DataFrame()), {k: v for k, v in tables.items() if k != "summary"})
    why = ((have.blocks("layer importance needs block skipping") if have.weight_steps else None)
           or "not measured: `specscope prune RUN` runs the model with each block skipped (it needs the live model)")
    return Finding("pruning", PRUNE_TITLE, {"verdict": why, "missing": [why], "applies": False})


def findings(run: Run | str | os.PathLike, metric: str = "alpha_tail") -> list[Finding]:
    """Every SPEC section 5 analysis that reads a run, each with its verdict: SoSD, compression waves, the depth
    profile (weight probe), the spectral edge (trajectory probe), and pruning when ``specscope prune RUN`` has saved
    its results beside the run: a list of five :class:`Finding` in that order. ``run``: a :class:`Run` or a run
    directory; ``metric``: the metric of the depth profile. An analysis the run's data does not allow says what is
    missing in its verdict (``verdict["missing"]``, ``Finding.applies`` False); none raises."""
    run = run if isinstance(run, Run) else open_run(run)
    have = contents(run)
    out: list[Finding] = []
    table, verdict = sosd(run, have=have)
    out.append(Finding("sosd", "Stability of the singular distribution (SoSD onset vs loss knee)", verdict, table))
    table, verdict = compression_waves(run, have=have)
    out.append(Finding("compression_waves", "Compression waves across depth", verdict, table))
    table, verdict = depth_profiles(run, metric, have=have)
    if verdict.get("applies"):  # the three alpha variants of SPEC 5.3, and which one matches the paper's range
        variants = profile_variants(run, have)
        verdict = {**verdict, "variants": variants, "verdict": join(verdict["verdict"], paper_range_sentence(variants))}
    out.append(Finding("depth_profile", f"Depth profile of {metric}", verdict, table))
    table, events, verdict = edge_analysis(run)
    out.append(Finding("spectral_edge", "Trajectory gap dynamics (spectral edge)", verdict, table, {"events": events}))
    out.append(pruning_finding(run, have))
    return out


def to_json(items: list[Finding], with_tables: bool = True) -> str:
    """The findings as a JSON string: a list of objects with ``name``, ``title``, ``verdict`` and (``with_tables``,
    non-empty tables only) ``table`` as a list of row records."""
    doc = []
    for f in items:
        d = {"name": f.name, "title": f.title, "verdict": jsonable(f.verdict)}
        if with_tables and not f.table.empty:
            d["table"] = json.loads(f.table.to_json(orient="records"))
        doc.append(d)
    return json.dumps(doc, indent=1)


def to_text(items: list[Finding], max_rows: int = 20) -> str:
    """Plain text for a terminal: each finding's title, verdict sentence, verdict values and the first ``max_rows``
    rows of its table; one string."""
    lines = []
    for f in items:
        lines.append(f"== {f.title}")
        lines.append(f"   {f.verdict.get('verdict', '')}")
        extra = {k: v for k, v in jsonable(f.verdict).items() if k not in ("verdict", "missing", "applies")}
        if extra:
            lines.append("   " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()))
        if not f.table.empty:
            with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
                lines.append(f.table.head(max_rows).to_string(index=False))
            if len(f.table) > max_rows:
                lines.append(f"   ... {len(f.table) - max_rows} more rows (--json for all)")
        lines.append("")
    return "\n".join(lines)
