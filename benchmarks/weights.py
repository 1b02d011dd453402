"""Weight probe vs the bare float64 eigensolver on a GPT-2-small-shaped set of matrices.

12 layers, width 768: q, k, v, o (768x768), mlp_in (3072x768), mlp_out (768x3072): 72 matrices.
Prints, from one run, the median time of
  probe              ss.probes.Weights(...).measure(): spectra + every SPEC section 3 metric + rows
  bare, serial       per matrix: float64 Gram on the short side + numpy eigvalsh, one after another
  bare, side by side the same bare work spread over the cores as the probe spreads it
  eigvalsh alone     numpy eigvalsh on precomputed float64 Grams, serial
  torch bare         the same bare work with torch (matmul + torch.linalg.eigvalsh), serial
and the ratios. Target: probe <= 1.3x the bare eigensolver.

    python benchmarks/weights.py [--repeats 3] [--threads N] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from shapes import GPT2SmallShapes
from specscope.models import catalog
from specscope.probes import ProbeContext, Weights
from specscope.spectra.compute import parallel_map


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

    np_mats = [m.double().numpy() for m in mats]

    def gram(x):
        return x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x

    def bare_one(x) -> None:
        np.linalg.eigvalsh(gram(x))

    def bare() -> None:
        for x in np_mats:
            bare_one(x)

    def bare_parallel() -> None:
        parallel_map(bare_one, np_mats)

    grams = [gram(x) for x in np_mats]

    def eig_only() -> None:
        for g in grams:
            np.linalg.eigvalsh(g)

    def torch_bare() -> None:
        for w in mats:
            w = w.double()
            torch.linalg.eigvalsh(w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w)

    probe = Weights(every=1)
    ctx = ProbeContext(model, cat, step=0)

    def run_probe() -> None:
        with torch.no_grad():
            probe.measure(ctx)

    run_probe()  # warm-up (thread pools, allocator)
    t = {}
    for _ in range(2):  # alternate rounds, so drift of the machine hits all alike
        for name, fn in (("probe", run_probe), ("bare", bare), ("bare_par", bare_parallel), ("eig", eig_only), ("torch", torch_bare)):
            t.setdefault(name, []).append(timed(fn, a.repeats))
    t = {k: min(v) for k, v in t.items()}
    print(f"probe (spectra + metrics + rows)      {t['probe']:8.3f} s")
    print(f"bare, serial (Gram + eigvalsh)        {t['bare']:8.3f} s")
    print(f"bare, side by side on the cores       {t['bare_par']:8.3f} s")
    print(f"eigvalsh alone on the Grams, serial   {t['eig']:8.3f} s")
    print(f"torch bare, serial                    {t['torch']:8.3f} s")
    print(f"ratio probe / bare side by side       {t['probe'] / t['bare_par']:8.3f}   (target <= 1.3)")
    print(f"ratio probe / bare serial             {t['probe'] / t['bare']:8.3f}")
    print(f"ratio probe / eigvalsh alone          {t['probe'] / t['eig']:8.3f}")


if __name__ == "__main__":
    main()
