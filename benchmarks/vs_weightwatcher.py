"""specscope.analyze vs WeightWatcher 0.7.7 analyze() on a GPT-2-small-shaped model.

12 layers, width 768, random init (72 matrices: q k v o 768x768, mlp 3072x768 and 768x3072),
both in one run on the same model. Prints both times, the ratio, and the largest relative
difference of alpha between the two. Target: specscope >= 4x faster, same alphas.

    python benchmarks/vs_weightwatcher.py
"""
from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch

from shapes import GPT2SmallShapes
import specscope as ss


def main() -> None:
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = GPT2SmallShapes()
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {torch.get_num_threads()} threads")
    t_ours, t_ww = [], []
    for _ in range(2):  # alternate, so drift of the machine hits both alike; medians below
        t0 = time.perf_counter()
        ours = ss.analyze(model, progress=False)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = ww.WeightWatcher(model=model).analyze()
        t_ww.append(time.perf_counter() - t0)
    print("runs (specscope, weightwatcher):", ", ".join(f"({a:.2f} s, {b:.2f} s)" for a, b in zip(t_ours, t_ww)))
    t_ours, t_ww = float(np.median(t_ours)), float(np.median(t_ww))
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    ours = ours.set_index("name").loc[names]
    rel = {}
    for mine, col in (("alpha_mle", "alpha"), ("alpha_weighted", "alpha_weighted"), ("stable_rank", "stable_rank"),
                      ("entropy_norm", "entropy"), ("log_norm", "log_norm")):
        a, b = ours[mine].to_numpy(float), theirs[col].to_numpy(float)
        rel[mine] = float(np.max(np.abs(a - b) / np.abs(b)))
    print(f"matrices: specscope {len(ours)}, weightwatcher {len(theirs)}")
    print(f"specscope.analyze              {t_ours:8.2f} s")
    print(f"WeightWatcher.analyze          {t_ww:8.2f} s")
    print(f"speed-up (weightwatcher / ours) {t_ww / t_ours:7.2f}x   (target >= 4)")
    for k, v in rel.items():
        print(f"max relative difference {k:15s} {v:.2e}")


if __name__ == "__main__":
    main()
