"""How the report and the terminal summaries write a number: :func:`fmt` (:func:`specscope.numbers.sig`, at most
6 significant digits) with the unit where the name says it (seconds, tokens, steps, tokens/s), and tables of them."""
from __future__ import annotations

import html

import pandas as pd

from ..numbers import DEFAULT_DIGITS, MAX_DIGITS, MISSING, sig  # noqa: F401  (MAX_DIGITS, MISSING: report.format's)

_UNITS = {"tokens": "tokens", "step": "steps", "steps": "steps", "tokens_per_s": "tokens/s", "wall_time": "s",
          "seconds": "s", "runtime": "s", "elapsed": "s", "epoch": "epochs", "epochs": "epochs"}


def unit_of(name: str) -> str | None:
    """The unit of a quantity named ``name`` when the name says it (``tokens``, ``step``, ``tokens_per_s``,
    ``probe_seconds/<probe>``, HF's ``train_runtime`` / ``eval_runtime``, ``*_per_second``): a short unit string
    (``"s"``, ``"tokens"``, ``"steps"``, ``"tokens/s"``, ``"/s"``), or None when it is unknown or dimensionless."""
    key = str(name).lower()
    if key in _UNITS:
        return _UNITS[key]
    leaf = key.rsplit("/", 1)[-1]
    if key.startswith("probe_seconds") or key.endswith(("_seconds", "_runtime", "_time_s")):
        return "s"
    if key.endswith("_per_second"):
        return "/s"
    return _UNITS.get(leaf)


def fmt(value, unit: str | None = None, digits: int = DEFAULT_DIGITS) -> str:
    """``value`` as display text with ``unit`` (:func:`specscope.numbers.sig`, the one home of number formatting):
    a str."""
    return sig(value, digits, unit)


def format_frame(df: pd.DataFrame, units: dict[str, str] | None = None, digits: int = DEFAULT_DIGITS) -> pd.DataFrame:
    """``df`` with every cell as display text (:func:`fmt`; the unit of a column from ``units``, else from its name
    with :func:`unit_of` when the column holds numbers): a DataFrame of str with the same index and columns."""
    units = units or {}
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])
        unit = units.get(col, unit_of(col) if numeric else None)
        out[col] = [fmt(v, unit, digits) for v in df[col].tolist()]
    return out


def table_html(df: pd.DataFrame, units: dict[str, str] | None = None, digits: int = DEFAULT_DIGITS,
               index: bool = False) -> str:
    """``df`` as an HTML table (escaped, every number through :func:`fmt` via :func:`format_frame`): a str; an empty
    frame is a one-line note."""
    if df.empty:
        return '<p class="note missing">(empty table)</p>'
    shown = format_frame(df.reset_index() if index else df, units, digits)
    return shown.to_html(index=False, border=0, escape=True)


def fmt_value(name: str, value) -> str:
    """``value`` of a quantity called ``name`` as display text: :func:`fmt` with the unit the name says; a dict as
    ``key value, ...`` with each value formatted the same way; a list as its items formatted. A str."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt_value(str(k), v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_value(name, v) for v in value) + "]"
    return fmt(value, unit_of(name))


def facts_html(facts: dict) -> str:
    """A two-column table of ``facts`` (name → value; None left out), each value through :func:`fmt_value`: an HTML
    str."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt_value(str(k), v))}</td></tr>"
                   for k, v in facts.items() if v is not None)
    return f"<table class=facts>{rows}</table>"
