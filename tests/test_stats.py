"""Noise for verdicts (specscope.analysis.stats) and the claims table (specscope.experiments.claims)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from specscope.analysis.stats import bootstrap, difference, estimate, interval, verdict, within
from specscope.experiments.claims import claim, claims_frame, claims_markdown, write_claims, write_result

ROOT = Path(__file__).resolve().parents[1]


def test_estimate_is_the_t_interval():
    v = [1.0, 2.0, 4.0, 5.0]
    e = estimate(v)
    lo, hi = sps.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=sps.sem(v))
    assert e.mean == pytest.approx(3.0) and e.sd == pytest.approx(np.std(v, ddof=1))
    assert (e.lo, e.hi) == pytest.approx((lo, hi))
    assert estimate([1.0, float("nan"), None]).n == 1


def test_verdicts_follow_the_interval():
    far = estimate([10.0, 10.5, 9.8])
    assert verdict(far, 5.0, +1) == "reproduced" and verdict(far, 5.0, -1) == "not reproduced"
    assert verdict(estimate([-1.0, 1.0, 0.5]), 0.0) == "not significant"
    assert verdict(estimate([3.0]), 0.0) == "not significant"  # one seed: no interval, no verdict either way
    assert within(interval(0.3, 0.2, 0.4), 0.1, 0.5) == "reproduced"
    assert within(interval(0.9, 0.8, 1.0), 0.1, 0.5) == "not reproduced"
    assert within(interval(0.5, 0.4, 0.6), 0.1, 0.5) == "not significant"


def test_paired_difference_removes_the_seed_effect():
    seed_effect = np.array([0.0, 5.0, -5.0, 2.0])
    a, b = 1.0 + seed_effect + [0.01, -0.01, 0.02, 0.0], seed_effect
    assert verdict(difference(a, b), 0.0) == "reproduced"
    assert verdict(difference(a, b, paired=False), 0.0) == "not significant"


def test_bootstrap_covers_the_mean_of_a_known_sample():
    rng = np.random.default_rng(0)
    e = bootstrap(rng.normal(2.0, 1.0, 200))
    assert e.lo < 2.0 < e.hi and e.hi - e.lo < 0.4
    assert not bootstrap([1.0, 2.0]).has_interval


def test_claims_table_and_readme_block(tmp_path):
    rows = [claim("a is big", "a = 10", estimate([9.0, 11.0, 10.0]), "reproduced"),
            claim("b | c", "n/a", None, "not significant", ours="not measured")]
    df = claims_frame(rows)
    assert list(df["verdict"]) == ["reproduced", "not significant"] and "10 ± 1" in df["ours"][0]
    assert "b \\| c" in claims_markdown(df)
    with pytest.raises(ValueError):
        claim("x", "y", None, "maybe")
    out = tmp_path / "results" / "sosd"
    write_claims(df, out)
    write_result(out, "sosd", "specscope experiment sosd --seeds 3", 125.0, 3)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nafter\n")
    subprocess.run([sys.executable, str(ROOT / "docs" / "make_results.py"), "--dir", str(tmp_path / "results"),
                    "--readme", str(readme)], check=True)
    text = readme.read_text()
    assert "old" not in text and text.endswith("after\n") and "2.1 min wall time, 3 seed(s)" in text
    assert "| a is big | a = 10 |" in text and "Not run yet: `specscope experiment lens" in text
    assert json.loads((out / "result.json").read_text())["wall_s"] == 125.0
    assert math.isnan(df["mean"][1])


def test_fisher_verdict_against_the_hypergeometric_closed_form():
    from math import comb

    from specscope.analysis.stats import fisher_verdict

    # n/n vs 0/n: the only table as extreme, p = 1 / C(2n, n); 3 a side cannot reach p < 0.05 (p = 1/20 exactly)
    assert fisher_verdict(3, 3, 0, 3) == (pytest.approx(1 / comb(6, 3), rel=1e-12), "not significant")
    assert fisher_verdict(4, 4, 0, 4) == (pytest.approx(1 / 70, rel=1e-12), "reproduced")
    # 2/3 vs 0/3: 2 successes among 6, 3 drawn for a: P(X >= 2) = C(2,2) C(4,1) / C(6,3) = 0.2
    assert fisher_verdict(2, 3, 0, 3)[0] == pytest.approx(comb(2, 2) * comb(4, 1) / comb(6, 3), rel=1e-12)
    # the opposite direction significant: not reproduced; claimed below (side -1) it is reproduced
    assert fisher_verdict(0, 6, 6, 6) == (pytest.approx(1.0), "not reproduced")
    assert fisher_verdict(0, 6, 6, 6, side=-1) == (pytest.approx(1 / comb(12, 6), rel=1e-12), "reproduced")
