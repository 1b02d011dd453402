import numpy as np

from specscope.analysis.edge import PhaseRule, gap_events, lagged_correlation, phases


def test_rise_plateau_collapse():
    gap = np.array([1.0, 1.5, 2.5, 3.8, 4.0, 3.9, 3.7, 2.6, 1.5, 1.2, 1.1])
    lab = phases(gap, PhaseRule(smooth=1, plateau_frac=0.8, collapse_frac=0.5))
    assert lab.tolist() == ["rise"] * 3 + ["plateau"] * 4 + ["decline", "collapse", "collapse", "collapse"]


def test_lagged_correlation_finds_the_lag():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200)
    y = np.roll(x, 3) + 0.1 * rng.standard_normal(200)  # y[t] = x[t - 3]
    corr = lagged_correlation(x, y, 6)
    assert int(corr.loc[corr["corr"].idxmax(), "lag"]) == 3 and corr["corr"].max() > 0.9


def test_gap_events():
    ev = gap_events(np.arange(6) * 10, np.array([1.0, 1.6, 2.0, 1.1, 1.7, 1.7]), np.array([1, 1, 2, 2, 2, 2.0]))
    assert ev["event"].tolist() == ["opening", "kstar 1 -> 2", "collapse", "opening"]
    assert ev["step"].tolist() == [10, 20, 30, 40]
