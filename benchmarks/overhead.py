"""Training overhead of the probes: demo-sized training with and without them.

The demo's model (4 layers, width 128) on the stdlib corpus, same seed, same data order;
runs alternate (without, weights only, demo probes, ...) in one process so drift hits all alike.
"demo probes" = the demo's cadence: weights every 25 steps, activation and per-sample
gradient spectra every 100. Prints median wall times and ratios. Targets: <= 1.10 with the
weight probe, <= 1.15 with the demo probes.

    python benchmarks/overhead.py [--steps 300] [--repeats 2] [--every 25] [--lens-every 100]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from specscope.probes import Weights
from specscope.train import GPTConfig, TrainConfig, load_corpus, train
from specscope.train.trainer import default_probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--lens-every", type=int, default=100)
    a = ap.parse_args()
    corpus = load_corpus("stdlib")
    mcfg = GPTConfig()
    tcfg = TrainConfig(steps=a.steps, eval_every=100, seed=0, probe_every=a.every, lens_every=a.lens_every)
    labels = {"without": lambda: [], "weights": lambda: [Weights(every=a.every)],
              "demo probes": lambda: default_probes(tcfg, corpus, mcfg.seq_len)}
    times: dict[str, list[float]] = {k: [] for k in labels}
    probe_seconds: dict[str, list[float]] = {k: [] for k in labels}
    from specscope.store import open_run

    for _ in range(a.repeats):
        for label, make in labels.items():
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                res = train(mcfg, tcfg, d, probes=make(), corpus=corpus, progress=False)
                times[label].append(time.perf_counter() - t0)
                sc = open_run(d).scalars()
                probe_seconds[label].append(float(sc[[c for c in sc.columns if c.startswith("probe_seconds/")]].sum().sum()))
            print(f"  {label:12s} {times[label][-1]:7.2f} s  (final loss {res.final_loss:.4f})", flush=True)
    base = statistics.median(times["without"])
    print(f"steps {a.steps}; weights every {a.every}, activations + gradients every {a.lens_every}")
    for label, target in (("without", None), ("weights", 1.10), ("demo probes", 1.15)):
        t = statistics.median(times[label])
        extra = f"ratio {t / base:6.3f} (target <= {target:.2f}), probes themselves {statistics.median(probe_seconds[label]):.2f} s" if target else ""
        print(f"{label:12s} {t:8.2f} s   {extra}")


if __name__ == "__main__":
    main()
