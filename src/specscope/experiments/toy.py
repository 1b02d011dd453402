"""Toy tasks (SPEC 5.8): modular arithmetic, Dyck-1, cyclic shift; each sample is a short
token sequence whose answer is read at the last position, so any causal LM of the
reference family trains on them, with train / test accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OPS = ("+", "-", "*")


@dataclass
class ToyData:
    """A toy task split into train and test: ``train_x`` / ``test_x`` are (N, T) int64 token ids, ``train_y`` /
    ``test_y`` (N,) the token expected after the last position, ``vocab_size`` the number of token ids, ``name``
    the task, and ``phase_train`` / ``phase_test`` the latent phase of each sample (for Fourier probes), if any."""

    name: str
    vocab_size: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    phase_train: np.ndarray | None = None  # the latent phase of each sample (for Fourier probes), if any
    phase_test: np.ndarray | None = None


def _split(x: np.ndarray, y: np.ndarray, frac: float, seed: int, phase: np.ndarray | None = None) -> tuple:
    order = np.random.default_rng(seed).permutation(len(x))
    n = int(round(frac * len(x)))
    tr, te = order[:n], order[n:]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).long()  # noqa: E731
    return t(x[tr]), t(y[tr]), t(x[te]), t(y[te]), (None if phase is None else phase[tr]), (None if phase is None else phase[te])


def modular_arithmetic(p: int = 97, op: str = "+", train_frac: float = 0.3, seed: int = 0) -> ToyData:
    """All pairs ``(a, b)``: sequence ``[a, op, b, =]``, answer ``a op b mod p``; tokens ``0..p-1``, then op and ``=``.
    A :class:`ToyData` (``train_frac`` of the pairs in train, phase ``a``); ValueError for an unknown ``op``."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}")
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    c = {"+": a + b, "-": a - b, "*": a * b}[op] % p
    op_tok, eq_tok = p + OPS.index(op), p + len(OPS)
    x = np.stack([a, np.full_like(a, op_tok), b, np.full_like(a, eq_tok)], axis=1)
    return ToyData(f"mod{p}{op}", p + len(OPS) + 1, *_split(x, c, train_frac, seed, phase=a))


def cyclic_shift(c: int = 64, length: int = 8, offset: int = 2, steps: tuple[int, ...] = (1, 3, 5), train_frac: float = 0.5,
                 seed: int = 0) -> ToyData:
    """``x(a) = (o + (a + j d) mod c)_{j<L}``, answer ``o + (a + L d) mod c``, for every start ``a`` and step ``d``:
    a :class:`ToyData` (``train_frac`` of the sequences in train, phase ``a``)."""
    rows, ans, phase = [], [], []
    for d in steps:
        for a in range(c):
            rows.append([offset + (a + j * d) % c for j in range(length)])
            ans.append(offset + (a + length * d) % c)
            phase.append(a)
    return ToyData(f"shift{c}", offset + c, *_split(np.array(rows), np.array(ans), train_frac, seed, np.array(phase)))


def dyck1(n: int = 4000, length: int = 16, seed: int = 0, train_frac: float = 0.8) -> ToyData:
    """Strings of ``(`` (0) and ``)`` (1) followed by a query token 4; answer 2 if balanced, else 3. Half are balanced
    (uniform shuffles of ``length/2`` of each, kept when balanced), half uniform random strings. A :class:`ToyData`
    of ``n`` samples (``train_frac`` in train, no phase); ValueError for an odd ``length``."""
    if length % 2:
        raise ValueError("length must be even")
    rng = np.random.default_rng(seed)
    half = [0] * (length // 2) + [1] * (length // 2)
    rows, ans = [], []
    for i in range(n):
        if i % 2 == 0:
            s = rng.permutation(half).tolist()
            while not _balanced(s):
                s = rng.permutation(half).tolist()
        else:
            s = rng.integers(0, 2, length).tolist()
        rows.append(s + [4])
        ans.append(2 if _balanced(s) else 3)
    return ToyData("dyck1", 5, *_split(np.array(rows), np.array(ans), train_frac, seed))


def _balanced(s: list[int]) -> bool:
    depth = 0
    for t in s:
        depth += 1 if t == 0 else -1
        if depth < 0:
            return False
    return depth == 0


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    """Fraction of samples (in [0, 1]) whose last-position argmax is the answer, in batches of ``batch``; the
    model's train/eval mode is restored."""
    was = model.training
    model.eval()
    hits = 0
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch])
        logits = out[0] if isinstance(out, tuple) else out
        hits += int((logits[:, -1].argmax(-1) == y[i : i + batch]).sum())
    model.train(was)
    return hits / max(1, len(x))


def fourier_energy(h: np.ndarray, phase: np.ndarray, n_phase: int) -> np.ndarray:
    """Energy ``m_r`` per frequency ``r = 0..n_phase//2`` of hidden states ``h`` (N, d) along their latent phase.

    Hidden states are averaged per phase value, centered across phases (so ``m_0 = 0``), and
    Fourier-transformed along the phase; ``m_r`` sums ``|FFT|^2`` over the hidden dimensions.
    Returns a float64 array of ``n_phase // 2 + 1`` energies (squared hidden-state units).
    """
    h = np.asarray(h, dtype=np.float64)
    sums = np.zeros((n_phase, h.shape[1]))
    counts = np.zeros(n_phase)
    np.add.at(sums, phase, h)
    np.add.at(counts, phase, 1)
    seen = counts > 0
    mean = np.zeros_like(sums)
    mean[seen] = sums[seen] / counts[seen, None]
    mean[seen] -= mean[seen].mean(axis=0)
    spec = np.fft.rfft(mean, axis=0)
    return (np.abs(spec) ** 2).sum(axis=1)


def band_concentration(m: np.ndarray, band) -> float:
    """``H_S = sum_{r in S} m_r / sum_r m_r``: the fraction (in [0, 1]) of the energy ``m`` in the frequencies
    ``band``; NaN when ``m`` sums to 0."""
    tot = m.sum()
    return float(m[list(band)].sum() / tot) if tot > 0 else float("nan")


def top_band_concentration(m: np.ndarray, size: int) -> float:
    """``H_S`` with ``S`` the ``size`` strongest nonzero frequencies of the energies ``m`` (``m[0]``, the mean, left
    out of ``S`` and of the total): the fraction (in [0, 1]) of the energy there, so every run and step of a study
    uses the same ``|S| = size``. NaN when the energy is 0; ValueError unless ``0 < size < len(m) - 1`` (an ``S``
    holding every frequency would make ``H_S`` 1 whatever the profile)."""
    m = np.asarray(m, dtype=np.float64)[1:]
    if not 0 < size < len(m):
        raise ValueError(f"|S| = {size} must be at least 1 and below the {len(m)} nonzero frequencies")
    return band_concentration(m, np.argsort(m, kind="stable")[::-1][:size])


def peak_concentration(m: np.ndarray) -> float:
    """``H_peak = max_r m_r / sum_r m_r``: the fraction (in [0, 1]) of the energy ``m`` in its strongest frequency;
    NaN when ``m`` sums to 0."""
    tot = m.sum()
    return float(m.max() / tot) if tot > 0 else float("nan")
