"""Run-store comparison for the distributed tests: two runs hold the same rows, each once, with equal values."""
from __future__ import annotations

import numpy as np

import specscope as ss

METRIC_KEY = ["step", "probe", "layer", "kind", "name", "metric"]
SPECTRUM_KEY = ["step", "probe", "layer", "kind", "name", "quantity"]


def _close(a: np.ndarray, b: np.ndarray, rtol: float) -> np.ndarray:
    """Elementwise: equal to ``rtol`` relative (an absolute floor of 1e-9 for values near 0), or both NaN."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore"):
        return (a == b) | (np.abs(a - b) <= rtol * np.maximum(np.abs(a), 1e-9 / rtol)) | (np.isnan(a) & np.isnan(b))


def assert_same_rows(reference: str, other: str, rtol: float = 1e-3) -> dict[str, int]:
    """Assert run ``other`` holds the metric and spectrum rows of run ``reference``: the same keys, each once, values
    and statuses equal (values to ``rtol``); and the same ``loss`` scalars (when they have them). Returns the row counts."""
    a, b = ss.open_run(reference), ss.open_run(other)
    ma, mb = a.metrics(), b.metrics()
    assert not mb.duplicated(METRIC_KEY).any(), mb[mb.duplicated(METRIC_KEY, keep=False)].head()
    m = ma.merge(mb, on=METRIC_KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    assert (m._merge == "both").all(), m[m._merge != "both"][METRIC_KEY + ["_merge"]].head(10)
    ok = _close(m.value_a, m.value_b, rtol)
    assert ok.all(), m[~ok][METRIC_KEY + ["value_a", "value_b"]].head(10)
    assert (m.status_a == m.status_b).all(), m[m.status_a != m.status_b][METRIC_KEY + ["status_a", "status_b"]].head()
    sa, sb = a.spectra(), b.spectra()
    assert not sb.duplicated(SPECTRUM_KEY).any()
    s = sa.merge(sb, on=SPECTRUM_KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    assert (s._merge == "both").all(), s[s._merge != "both"][SPECTRUM_KEY].head()
    for va, vb, key in zip(s.values_a, s.values_b, s[SPECTRUM_KEY].itertuples(index=False)):
        assert len(va) == len(vb) and _close(va, vb, rtol).all(), key
    ca, cb = a.scalars(), b.scalars()
    assert ("loss" in ca) == ("loss" in cb)
    if "loss" in ca:
        la, lb = ca.set_index("step")["loss"].dropna(), cb.set_index("step")["loss"].dropna()
        assert la.index.equals(lb.index) and _close(la.to_numpy(), lb.to_numpy(), 1e-5).all(), (la, lb)
    return {"metrics": len(mb), "spectra": len(sb)}
