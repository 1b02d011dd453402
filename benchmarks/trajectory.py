"""Per-step cost of the trajectory window for P = 1e7 parameters, W in {8, 16, 32}, exact and sketch.

exact   a new update's W inner products against the stored float32 updates: O(W P)
sketch  CountSketch of the parameters to k = 4096 dims, then the same on k-dim rows: O(P + W k)
The reference is one pass reading the W stored updates (a float64 sum over each), the floor
for any exact method. Linear growth in W shows as a constant time per stored update.

    python benchmarks/trajectory.py [--p 10000000] [--windows 8 16 32]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

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


if __name__ == "__main__":
    main()
