"""The claims table every built-in study prints (SPEC section 5): per claim the paper's number, ours with
its spread over seeds, and a verdict (``reproduced`` / ``not reproduced`` / ``not significant``, see
:mod:`specscope.analysis.stats`); written as ``claims.csv`` and ``claims.md`` beside the study's runs,
with ``result.json`` (command, seeds, wall time) from which the README's results section is made.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..analysis.stats import VERDICTS, Estimate
from ..store.artifacts import jsonable

CLAIM_COLUMNS = ["claim", "paper", "ours", "verdict", "mean", "sd", "lo", "hi", "n"]


def claim(claim: str, paper: str, est: Estimate | None, verdict: str, ours: str | None = None,
          fmt: str = "{:.3g}", unit: str = "", of: str = "seeds") -> dict:
    """One row of a claims table: ``claim`` (the statement), ``paper`` (the paper's number), ``ours`` (given, or
    ``est`` as text: mean ± sd with its interval and how many ``of``), ``verdict`` (one of
    :data:`~specscope.analysis.stats.VERDICTS`; a ValueError otherwise) and ``est``'s numbers (NaN without)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
    nums = ({"mean": est.mean, "sd": est.sd, "lo": est.lo, "hi": est.hi, "n": est.n} if est is not None
            else {"mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan, "n": 0})
    text = ours if ours is not None else est.text(fmt, unit, of) if est is not None else "n/a"
    return {"claim": claim, "paper": paper, "ours": text, "verdict": verdict, **nums}


def claims_frame(rows: list[dict]) -> pd.DataFrame:
    """The claims table of ``rows`` (from :func:`claim`), columns :data:`CLAIM_COLUMNS`."""
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def claims_markdown(claims: pd.DataFrame) -> str:
    """The claims table as a Markdown table: claim, paper, ours (with spread), verdict."""
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| claim | paper | ours | verdict |", "|---|---|---|---|"]
    c = claims.reindex(columns=CLAIM_COLUMNS)
    lines += [f"| {cell(r.claim)} | {cell(r.paper)} | {cell(r.ours)} | **{cell(r.verdict)}** |" for r in c.itertuples()]
    return "\n".join(lines)


def write_claims(claims: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write ``claims.csv`` and ``claims.md`` under ``out_dir``; returns the CSV's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    claims.to_csv(out / "claims.csv", index=False)
    (out / "claims.md").write_text(claims_markdown(claims) + "\n")
    return out / "claims.csv"


def write_result(out_dir: str | Path, experiment: str, command: str, wall_s: float, seeds: int, **extra) -> Path:
    """Write ``result.json`` under ``out_dir`` (the ``experiment``, the ``command`` that ran it, its ``wall_s``
    seconds and number of ``seeds``, and ``extra`` fields); returns its path."""
    p = Path(out_dir) / "result.json"
    p.write_text(json.dumps(jsonable({"experiment": experiment, "command": command, "wall_s": wall_s, "seeds": seeds,
                                      **extra}), indent=1) + "\n")
    return p
