import numpy as np
import pytest
import torch

import specscope as ss
from specscope.store.writer import RunWriter


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


def write_weights_run(path, spectra_rows, metric_rows=(), scalars=()):
    """A run store of weight-probe rows: ``spectra_rows`` (step, layer, kind, singular values) with their stable rank and
    squared Frobenius norm, extra ``metric_rows`` (step, layer, kind, metric, value), ``scalars`` (step, name, value);
    the opened :class:`specscope.Run`."""
    w = RunWriter(path, config={"synthetic": True})
    for step, layer, kind, sv in spectra_rows:
        w.add("spectra", {"step": step, "tokens": None, "probe": "weights", "layer": layer, "kind": kind,
                          "name": f"blocks.{layer}.{kind}", "quantity": "sv", "values": list(sv), "status": "ok"})
        w.add("metrics", {"step": step, "tokens": None, "probe": "weights", "layer": layer, "kind": kind,
                          "name": f"blocks.{layer}.{kind}", "metric": "stable_rank", "value": float((sv ** 2).sum() / sv[0] ** 2),
                          "status": "ok"})
        w.add("metrics", {"step": step, "tokens": None, "probe": "weights", "layer": layer, "kind": kind,
                          "name": f"blocks.{layer}.{kind}", "metric": "frob_sq", "value": float((sv ** 2).sum()), "status": "ok"})
    for step, layer, kind, metric, value in metric_rows:
        w.add("metrics", {"step": step, "tokens": None, "probe": "weights", "layer": layer, "kind": kind,
                          "name": f"blocks.{layer}.{kind}", "metric": metric, "value": value, "status": "ok"})
    for step, name, value in scalars:
        w.add("scalars", {"step": step, "tokens": None, "name": name, "value": value, "wall_time": 0.0})
    w.close()
    return ss.open_run(path)
