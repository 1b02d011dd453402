import numpy as np
import pytest

from specscope.spectra import compression, cosine, js_divergence, sd_variation, singular_distribution


def test_singular_distribution_and_variation():
    sv = np.array([[3.0, 1.0], [2.0, 2.0], [2.0, 2.0]])
    sd = singular_distribution(sv)
    np.testing.assert_allclose(sd, [[0.75, 0.25], [0.5, 0.5], [0.5, 0.5]])
    var, per = sd_variation(sv, steps=np.array([0, 10, 30]))
    assert np.isnan(var[0]) and var[1] == pytest.approx(np.sqrt(2 * 0.25**2)) and var[2] == 0
    assert per[1] == pytest.approx(var[1] / 10) and per[2] == 0


def test_compression_and_cosine():
    np.testing.assert_allclose(compression(np.array([10.0, 8.0, 5.0])), [0.0, 0.2, 0.5])
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / np.sqrt(2))
    assert np.isnan(cosine(np.zeros(2), np.ones(2)))


def test_js_divergence():
    p = np.array([0.5, 0.3, 0.2])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    q = np.array([0.7, 0.3])  # zero-padded
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    assert js_divergence(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(np.log(2))
    m = 0.5 * (p + np.array([0.7, 0.3, 0.0]))
    kl = lambda a: sum(x * np.log(x / y) for x, y in zip(a, m) if x > 0)
    assert js_divergence(p, q) == pytest.approx(0.5 * kl(p) + 0.5 * kl([0.7, 0.3, 0.0]))


def test_cos_sd_final_and_cos_w_final_known_answers():
    import torch

    from specscope.spectra import cos_sd_final, cos_w_final

    # sd rows: (0.5, 0.5), (1, 0), (1, 0): cosines with the last are 1/sqrt(2), 1, 1
    np.testing.assert_allclose(cos_sd_final(np.array([[1.0, 1.0], [3.0, 0.0], [2.0, 0.0]])), [1 / np.sqrt(2), 1.0, 1.0])
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0], [5.0, 1.0]])
    want = 10 / np.sqrt(31 * 32)  # <a, b> = 10, |a|^2 = 31, |b|^2 = 32
    assert cos_w_final(a, b, rows=2) == pytest.approx(want, rel=1e-12)  # blocks of 2 rows: the same answer
    assert cos_w_final(a, a) == pytest.approx(1.0, rel=1e-12)
    assert np.isnan(cos_w_final(a, b[:2])) and np.isnan(cos_w_final(torch.zeros(3, 2), b))


def test_lr_normalized_variation():
    from specscope.spectra import series_metrics

    # steps 0, 1, 10: sd (0.75, 0.25) -> (0.5, 0.5) -> (0.5, 0.5); nuclear norms 4, 4, 8
    sv = np.array([[3.0, 1.0], [2.0, 2.0], [4.0, 4.0]])
    m = series_metrics(sv, np.array([0, 1, 10]), lr=np.array([np.nan, 0.01, 0.02]))
    np.testing.assert_allclose(m["nuclear_norm"], [4.0, 4.0, 8.0])
    # row 1: ||(-0.25, 0.25)|| per 1 step, times ||W_0||_* = 4, over lr 0.01
    assert np.isnan(m["sd_variation_lr"][0]) and m["sd_variation_lr"][1] == pytest.approx(np.sqrt(2) * 0.25 * 4 / 0.01)
    assert m["sd_variation_lr"][2] == 0
    assert "sd_variation_lr" not in series_metrics(sv, np.array([0, 1, 10]))  # no learning rate: not computed
    m = series_metrics(sv, np.array([0, 1, 10]), lr=np.array([1.0, 0.0, -1.0]))
    assert np.isnan(m["sd_variation_lr"]).all()  # a rate that is not positive gives NaN
