"""Per-step cost of the trajectory window for P = 1e7 parameters, W in {8, 16, 32}, exact and sketch.

exact   a new update's W inner products against the stored float32 updates: O(W P)
sketch  CountSketch of the parameters to k = 4096 dims, then the same on k-dim rows: O(P + W k)
The reference is one pass reading the W stored updates (a float64 sum over each), the floor
for any exact method. Linear growth in W shows as a constant time per stored update.

Then the sketch's error against k: synthetic updates (P = 1e6, W = 16) with a planted gap after
the third direction (three strong directions plus isotropic noise); relative error of the top-3
singular values and whether ``kstar`` is found, at each k, over several sketch seeds.

    python benchmarks/trajectory.py [--p 10000000] [--windows 8 16 32] [--error-p 1000000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from specscope.spectra import spectrum_metrics
from specscope.streams import CountSketch, TrajectoryWindow


def timed(fn, repeats: int = 5) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=10_000_000)
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--error-p", type=int, default=1_000_000)
    ap.add_argument("--error-ks", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    sketch = CountSketch(a.p, a.k, seed=0)
    print(f"P = {a.p:,}, k = {a.k}, {torch.get_num_threads()} threads")
    print(f"{'W':>4} {'exact step':>12} {'per stored':>11} {'read pass':>10} {'exact/read':>11} {'sketch step':>12}")
    for w in a.windows:
        win = TrajectoryWindow(w, store_dtype=torch.float32)
        for _ in range(w):
            win.update(torch.randn(a.p, generator=g))
        d = torch.randn(a.p, generator=g)
        t_exact = timed(lambda: win.update(d))
        t_read = timed(lambda: [r.sum(dtype=torch.float64) for r in win.rows])
        swin = TrajectoryWindow(w, store_dtype=torch.float64)
        for _ in range(w):
            swin.update(torch.randn(a.k, generator=g, dtype=torch.float64))
        t_sketch = timed(lambda: swin.update(sketch(d)))
        print(f"{w:>4} {t_exact * 1e3:10.1f} ms {t_exact / w * 1e3:8.2f} ms {t_read * 1e3:8.1f} ms {t_exact / t_read:11.2f} "
              f"{t_sketch * 1e3:10.1f} ms")
    sketch_error(a.error_p, a.error_ks, a.seeds)


def planted_updates(p: int, w: int = 16, seed: int = 0) -> torch.Tensor:
    """``w`` updates: coefficients on 3 fixed random directions (scales 3, 2, 1.5) plus noise of norm ~0.3."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.linalg.qr(torch.randn(p, 3, generator=g, dtype=torch.float64))[0].T
    coef = torch.randn(w, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64)
    return coef @ dirs + 0.3 * torch.randn(w, p, generator=g, dtype=torch.float64) / np.sqrt(p)


def sketch_error(p: int, ks: list[int], seeds: int) -> None:
    x = planted_updates(p)
    exact = torch.linalg.svdvals(x).numpy()
    kstar = int(spectrum_metrics(exact[None, :], knee=False, mle=False).values["kstar"][0])
    print(f"\nsketch error vs k: P = {p:,}, W = {len(x)}, planted kstar = 3 (exact: {kstar}), {seeds} sketch seeds")
    print(f"{'k':>6} {'top-3 rel. err (median)':>24} {'(max)':>8} {'kstar right':>12}")
    for k in ks:
        errs, right = [], 0
        for seed in range(seeds):
            sk = CountSketch(p, k, seed=seed)
            win = TrajectoryWindow(len(x), store_dtype=torch.float64)
            for row in x:
                win.update(sk(row))
            sv = win.singular_values()
            errs.append(np.max(np.abs(sv[:3] / exact[:3] - 1)))
            right += int(spectrum_metrics(sv[None, :], knee=False, mle=False).values["kstar"][0]) == 3
        print(f"{k:>6} {np.median(errs):24.4f} {np.max(errs):8.4f} {right:>7}/{seeds}")


if __name__ == "__main__":
    main()
