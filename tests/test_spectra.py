import math

import numpy as np
import pytest
import torch

from conftest import with_singular_values
from specscope.spectra import (alpha_rank, describe, head_tail_knee, singular_values, singular_values_many,
                               spectrum_metrics, tail_window)

SCALE_FREE = {"frob_sq", "spectral_norm", "log_norm", "xmin", "alpha_weighted"}  # carry the scale


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("shape", [(40, 40), (30, 70), (70, 30)])
def test_prescribed_singular_values(method, shape, rng):
    r = min(shape)
    sv = np.sort(rng.uniform(0.05, 5.0, r))[::-1]
    w = with_singular_values(sv, shape, rng)
    got = singular_values(w, method=method).sv
    np.testing.assert_allclose(got, sv, rtol=1e-9)
    diag = torch.zeros(shape, dtype=torch.float64)
    diag[range(r), range(r)] = torch.from_numpy(sv[::-1].copy())  # unsorted diagonal
    np.testing.assert_allclose(singular_values(diag, method=method).sv, sv, rtol=1e-9)


def test_many_groups_by_shape_and_keeps_order(rng):
    mats = {f"m{i}": torch.randn(*s, dtype=torch.float32) for i, s in enumerate([(8, 16), (16, 8), (8, 16), (5, 5), (16, 8)])}
    got = singular_values_many(mats, max_batch_elems=200)  # forces chunking too
    assert list(got) == list(mats)
    for name, w in mats.items():
        ref = torch.linalg.svdvals(w.double()).numpy()
        np.testing.assert_allclose(got[name].sv, ref, rtol=1e-6, atol=1e-9)


def test_bf16_input_is_computed_in_float64():
    w = torch.randn(32, 64).to(torch.bfloat16)
    ref = torch.linalg.svdvals(w.double()).numpy()
    np.testing.assert_allclose(singular_values(w).sv, ref, rtol=1e-8)


@pytest.mark.parametrize("a", [0.6, 1.0, 1.7])
def test_alpha_rank_recovers_power_law_exponent(a, rng):
    j = np.arange(1, 501, dtype=float)
    p = j ** (-a)
    p /= p.sum()
    val, st = alpha_rank(p[None], (10, 200))
    assert st[0] == "ok" and abs(val[0] - a) / a < 1e-10
    noisy = p * np.exp(rng.normal(0, 0.05, len(p)))  # 5% multiplicative noise
    val, _ = alpha_rank(noisy[None], (10, 200))
    assert abs(val[0] - a) / a < 0.01
    # through describe(): singular values s_j = sqrt(lam_j)
    d = describe(np.sqrt(j ** (-a)))
    assert abs(d["alpha_head"] - a) / a < 1e-10 and abs(d["alpha_tail"] - a) / a < 1e-10


def test_hand_computed_metrics():
    sv = np.array([3.0, 2.9, 1.0, 0.9, 0.5])
    lam = sv**2
    total = lam.sum()  # 9 + 8.41 + 1 + 0.81 + 0.25 = 19.47
    assert total == pytest.approx(19.47)
    d = describe(sv)
    assert d["frob_sq"] == pytest.approx(19.47)
    assert d["spectral_norm"] == 3.0
    assert d["stable_rank"] == pytest.approx(19.47 / 9)
    p = lam / total
    ent = -sum(x * math.log(x) for x in p)
    assert d["entropy"] == pytest.approx(ent)
    assert d["entropy_norm"] == pytest.approx(ent / math.log(5))
    assert d["rankme"] == pytest.approx(math.exp(ent))
    # ratios 3/2.9, 2.9/1, 1/0.9, 0.9/0.5: the largest is s2/s3
    assert d["kstar"] == 2 and d["gap_ratio"] == pytest.approx(2.9)
    assert d["gap12"] == pytest.approx(3 / 2.9) and d["ratio[4]"] == pytest.approx(1.8)
    # cumulative lam: 9, 17.41, 18.41, ...; 0.95 * 19.47 = 18.4965 -> k95 = 4
    assert d["k95"] == 4
    assert describe(np.array([1.0, 1.0, 1.0, 1.0]))["k95"] == 4
    assert describe(np.array([10.0, 1.0, 0.1]))["k95"] == 1  # 100 / 101.01 = 0.990


def test_normalized_metrics_are_scale_invariant(rng):
    w = torch.from_numpy(rng.standard_normal((120, 300)))
    base = describe(w)
    for c in (1e-3, 7.0, 1e4):
        d = describe(w * c)
        for k, v in base.items():
            if k in SCALE_FREE or k == "status":
                continue
            assert d[k] == pytest.approx(v, rel=1e-8, abs=1e-12), k
        assert d["frob_sq"] == pytest.approx(base["frob_sq"] * c * c)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_gives_nan_and_status(bad):
    w = torch.randn(20, 30)
    w[3, 4] = bad
    d = describe(w)
    assert d["status"] != "ok" and "non-finite" in d["status"]
    assert all(math.isnan(v) for k, v in d.items() if k != "status")
    good = torch.randn(20, 30)
    many = singular_values_many({"good": good, "bad": w})
    assert many["good"].status == "ok" and many["bad"].status == "non-finite entries"
    table = spectrum_metrics(np.stack([many["good"].sv, many["bad"].sv]))
    sv = torch.linalg.svdvals(good.double()).numpy()  # the bad row leaves the good one's metrics alone
    assert table.values["stable_rank"][0] == pytest.approx((sv ** 2).sum() / sv[0] ** 2, rel=1e-9)
    assert np.isnan(table.values["stable_rank"][1])
    assert table.status["stable_rank"][1] == "non-finite spectrum"


def test_zero_matrix_and_short_spectra():
    d = describe(torch.zeros(10, 10))
    assert math.isnan(d["stable_rank"]) and "rank 0" in d["status"]
    d = describe(np.array([2.0]))
    assert d["stable_rank"] == 1.0 and math.isnan(d["kstar"])
    d = describe(np.array([3.0, 1.0, 0.5]))
    assert math.isnan(d["alpha_head"]) and "outside spectrum" in d["status"]


def test_tail_window_rules():
    assert tail_window(768, 768) == (100, 200)
    assert tail_window(1280, 1280) == (200, 400)
    assert tail_window(1600) == (400, 800)
    assert tail_window(4096) == (400, 800)
    assert tail_window(256) == (90, 200)
    assert tail_window(128) == (40, 90)  # deepest toy window that fits whole
    assert tail_window(64) == (10, 40)
    assert tail_window(30) == (10, 30)  # nothing fits: the first window clipped
    assert tail_window(5) is None


def test_knee_of_two_regime_spectrum():
    j = np.arange(1, 401, dtype=float)
    knee = 40
    p = np.where(j <= knee, j ** -0.5, knee ** -0.5 * (j / knee) ** -2.0)
    k, a, st = head_tail_knee((p / p.sum())[None])
    assert st[0] == "ok"
    assert abs(k[0] - knee) <= 2
    assert a[0] == pytest.approx(2.0, rel=0.01)
    d = describe(np.sqrt(p))
    assert abs(d["head_tail_knee"] - knee) <= 2


def test_sv_from_eig_equals_svd_and_clips_round_off(rng):
    from specscope.spectra import desc_eigvalsh, sv_from_eig

    x = rng.standard_normal((5, 8))
    lam = np.linalg.eigvalsh(x @ x.T)  # ascending
    np.testing.assert_allclose(sv_from_eig(lam), np.linalg.svd(x, compute_uv=False), rtol=0, atol=1e-10)
    np.testing.assert_allclose(sv_from_eig(torch.from_numpy(lam)), np.linalg.svd(x, compute_uv=False), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(sv_from_eig(np.array([4.0, -1e-17, 1.0, -3e-12])), [2.0, 1.0, 0.0, 0.0])
    got = sv_from_eig(np.array([[1.0, 9.0], [16.0, -1e-16]]))  # a stack: each row on its own
    np.testing.assert_array_equal(got, [[3.0, 1.0], [4.0, 0.0]])
    nan = sv_from_eig(np.array([1.0, np.nan, 4.0]))
    assert nan[:2].tolist() == [2.0, 1.0] and np.isnan(nan[2])
    # a rank-3 Gram of a 6 x 3 matrix: its three zero eigenvalues come out of the solver as +-round-off
    y = rng.standard_normal((6, 3))
    g = y @ y.T
    eig = desc_eigvalsh(g)
    np.testing.assert_allclose(eig, np.sort(np.linalg.eigvalsh(g))[::-1].clip(0), rtol=0, atol=1e-12)
    assert (eig >= 0).all() and np.all(np.diff(eig) <= 0)
    sv = sv_from_eig(eig)
    np.testing.assert_allclose(sv[:3], np.linalg.svd(y, compute_uv=False), rtol=0, atol=1e-10)
    assert (sv[3:] >= 0).all() and (sv[3:] < 1e-6).all()
    gf = np.asfortranarray(g)
    np.testing.assert_allclose(desc_eigvalsh(gf, overwrite=True), eig, rtol=0, atol=1e-12)  # in place, same answer
    np.testing.assert_allclose(desc_eigvalsh(torch.from_numpy(g)), eig, rtol=0, atol=1e-12)
