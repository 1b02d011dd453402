import numpy as np
import pytest
import torch


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def with_singular_values(sv: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """A random rotation of diag(sv) with the given shape."""
    m, n = shape
    d = np.zeros(shape)
    d[np.arange(len(sv)), np.arange(len(sv))] = sv
    return torch.from_numpy(orthogonal(m, rng) @ d @ orthogonal(n, rng).T)
