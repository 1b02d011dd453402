"""`ss.analyze` on a series of checkpoints (and on one file): serial vs fanned out on a local Ray.

A series of ``--count`` step-numbered safetensors checkpoints (default 8), each ``--mats``
float32 matrices (default 12: square ``n x n`` and wide ``n/2 x n`` in turn, ``n = 1024``),
written into a temporary directory (or ``--dir``). Prints, from one run, the time of
  serial        ss.analyze(dir): this process, one matrix at a time (its torch threads printed)
  Ray, cold     ss.analyze(dir, ray=True) right after Ray started (workers import specscope)
  Ray, warm     the same again (workers up)
on a local Ray of ``--cpus`` CPUs (one single-threaded worker per CPU; Ray's own start is
timed apart), the same for the last checkpoint alone (chunks of its matrices), checks that
the rows are equal, and prints the ratios serial / Ray. Serial and warm Ray alternate for
``--repeats`` rounds; each time is its minimum.

    OMP_NUM_THREADS=1 python benchmarks/ray_fanout.py [--count 8] [--n 1024] [--mats 12] [--cpus 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

import specscope as ss
from specscope.raysetup import init_ray


def write_series(d: Path, count: int, n: int, mats: int) -> None:
    """``count`` checkpoints ``step_XXXXXXX.safetensors`` of ``mats`` matrices that drift from step to step."""
    g = torch.Generator().manual_seed(0)
    shapes = [(n, n) if i % 2 == 0 else (n // 2, n) for i in range(mats)]
    w = {f"blocks.{i // 2}.mlp.{'fc' if i % 2 else 'proj'}.weight": torch.randn(s, generator=g) / s[1] ** 0.5
         for i, s in enumerate(shapes)}
    for c in range(count):
        save_file(w, str(d / f"step_{100 * c:07d}.safetensors"))
        w = {k: v + 0.02 * torch.randn(v.shape, generator=g) / v.shape[1] ** 0.5 for k, v in w.items()}


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(label: str, path: Path, repeats: int) -> None:
    t_cold, cold = timed(lambda: ss.analyze(path, progress=False, ray=True))
    t = {"serial": [], "warm": []}
    for _ in range(repeats):  # alternate rounds, so drift of the machine hits both alike
        dt, serial = timed(lambda: ss.analyze(path, progress=False))
        t["serial"].append(dt)
        dt, warm = timed(lambda: ss.analyze(path, progress=False, ray=True))
        t["warm"].append(dt)
    for df in (cold, warm):
        pd.testing.assert_frame_equal(df, serial, rtol=1e-10, atol=0)
    t_serial, t_warm = min(t["serial"]), min(t["warm"])
    print(f"{label}: {len(serial)} rows, equal to the serial ones (1e-10)")
    print(f"  serial                       {t_serial:8.2f} s")
    print(f"  Ray, cold workers            {t_cold:8.2f} s")
    print(f"  Ray, warm workers            {t_warm:8.2f} s")
    print(f"  speedup serial / Ray warm    {t_serial / t_warm:8.2f}x")
    print(f"  speedup serial / Ray cold    {t_serial / t_cold:8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--mats", type=int, default=12)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = a.dir or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        write_series(d, a.count, a.n, a.mats)
        size = sum(f.stat().st_size for f in d.glob("step_*.safetensors")) / 2**20
        print(f"{a.count} checkpoints x {a.mats} float32 matrices ({a.n}x{a.n} and {a.n // 2}x{a.n}), {size:.0f} MiB; "
              f"serial: torch {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
              f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        t0 = time.perf_counter()
        ray = init_ray("local", num_cpus=a.cpus)
        print(f"local Ray: {int(ray.cluster_resources()['CPU'])} CPUs, started in {time.perf_counter() - t0:.2f} s")
        compare(f"series of {a.count}", d, a.repeats)
        compare("one checkpoint", sorted(d.glob("step_*.safetensors"))[-1], a.repeats)
        ray.shutdown()


if __name__ == "__main__":
    main()
