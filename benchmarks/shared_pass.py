"""One measurement step of the activation and per-sample gradient probes: one shared forward pass vs their
separate passes, same model, same pool, alternating in one process.

The demo-sized reference GPT (4 layers, width 128, 128-token sequences) and the demo trainer's probes:
Activations over a 64-sequence pool and Gradients over its first 32 (``samples=32``), batches of 16.
"shared": both in one monitor (the gradients' forward carries the activations: 4 forwards, 2 of them
with a backward); "separate": each probe in its own monitor (6 forwards). Prints median seconds per
step and their ratio, and checks the spectra are equal. Target: shared / separate < 1.

    python benchmarks/shared_pass.py [--repeats 5] [--pool 64] [--samples 32] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

import specscope as ss
from specscope.train import GPT, GPTConfig


def _step(model, probes, device) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as d:
        with ss.Monitor(model, d, probes=probes) as mon:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            mon.step(0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        spec = ss.open_run(d).spectra()
        return dt, {(p, n): np.asarray(v) for p, n, v in zip(spec["probe"], spec["name"], spec["values"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    cfg = GPTConfig()
    model = GPT(cfg).to(device)
    pool = torch.randint(0, cfg.vocab_size, (a.pool, cfg.seq_len), generator=torch.Generator().manual_seed(1))

    def probes():
        return [ss.probes.Activations(pool, every=1), ss.probes.Gradients(pool, samples=a.samples, every=1)]

    times: dict[str, list[float]] = {"shared": [], "separate": []}
    _step(model, probes(), device)  # warm-up
    for _ in range(a.repeats):
        dt, shared = _step(model, probes(), device)
        times["shared"].append(dt)
        act, grad = probes()
        dt_a, sep_a = _step(model, [act], device)
        dt_g, sep_g = _step(model, [grad], device)
        times["separate"].append(dt_a + dt_g)
    for key, want in {**sep_a, **sep_g}.items():
        np.testing.assert_allclose(shared[key], want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    s, p = statistics.median(times["shared"]), statistics.median(times["separate"])
    print(f"pool {a.pool} x {cfg.seq_len}, gradient rows {a.samples}, batches of 16, {a.repeats} repeats, {device}")
    print(f"shared    {s:7.3f} s per step")
    print(f"separate  {p:7.3f} s per step")
    print(f"ratio shared / separate {s / p:.3f} (target < 1); spectra equal to 1e-10")


if __name__ == "__main__":
    main()
