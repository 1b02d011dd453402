"""Streaming covariance accumulation throughput vs a bare float64 matmul of the same shapes.

N rows of width d arrive in batches (as a probe pool's activations do); the accumulator
centers each batch and merges it (Chan). Throughput = N * d^2 multiply-adds per second; the
bare reference is ``X^T X`` for the same float64 batches. Target: >= 0.5 of the bare matmul.

    python benchmarks/covariance.py [--d 768] [--rows 65536] [--batch 8192]
"""
from __future__ import annotations

import argparse
import time

import torch

from specscope.streams import StreamingCovariance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(a.batch, a.d, generator=g) for _ in range(a.rows // a.batch)]
    batches64 = [b.double() for b in batches]

    def stream() -> None:
        cov = StreamingCovariance(a.d)
        for b in batches:
            cov.update(b)
        cov.compute()

    def bare() -> None:
        for b in batches64:
            b.T @ b

    t = {"stream": [], "bare": []}
    for _ in range(a.repeats):
        for name, fn in (("stream", stream), ("bare", bare)):
            t0 = time.perf_counter()
            fn()
            t[name].append(time.perf_counter() - t0)
    macs = a.rows * a.d * a.d
    ts, tb = min(t["stream"]), min(t["bare"])
    print(f"N={a.rows} rows, d={a.d}, batches of {a.batch}, {torch.get_num_threads()} threads")
    print(f"streaming covariance  {ts:7.3f} s  {macs / ts / 1e9:7.2f} G multiply-adds/s (float32 input, float64 accumulation)")
    print(f"bare float64 X^T X    {tb:7.3f} s  {macs / tb / 1e9:7.2f} G multiply-adds/s")
    print(f"throughput ratio      {tb / ts:7.3f}   (target >= 0.5)")


if __name__ == "__main__":
    main()
