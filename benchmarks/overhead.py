"""Training overhead of the weight probe: demo-sized training with and without it.

The demo's model (4 layers, width 128) on the stdlib corpus, same seed, same data order;
runs alternate (without, with, without, with, ...) in one process so drift hits both alike.
Prints the median wall time of each and their ratio. Target: <= 1.10 with the probe every 25 steps.

    python benchmarks/overhead.py [--steps 300] [--repeats 2] [--every 25]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from specscope.probes import Weights
from specscope.train import GPTConfig, TrainConfig, load_corpus, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--every", type=int, default=25)
    a = ap.parse_args()
    corpus = load_corpus("stdlib")
    mcfg = GPTConfig()
    tcfg = TrainConfig(steps=a.steps, eval_every=100, seed=0)
    times: dict[str, list[float]] = {"without": [], "with": []}
    probe_seconds = []
    for _ in range(a.repeats):
        for label in ("without", "with"):
            probes = [Weights(every=a.every)] if label == "with" else []
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                res = train(mcfg, tcfg, d, probes=probes, corpus=corpus, progress=False)
                times[label].append(time.perf_counter() - t0)
                if label == "with":
                    from specscope.store import open_run

                    sc = open_run(d).scalars()
                    probe_seconds.append(float(sc["probe_seconds/weights"].sum()))
            print(f"  {label:7s} probe: {times[label][-1]:7.2f} s  (final loss {res.final_loss:.4f})", flush=True)
    t_without, t_with = statistics.median(times["without"]), statistics.median(times["with"])
    n_meas = a.steps // a.every + 1
    print(f"steps {a.steps}, weight probe every {a.every} ({n_meas} measurements incl. step 0)")
    print(f"without probe   {t_without:8.2f} s")
    print(f"with probe      {t_with:8.2f} s   (probe itself: {statistics.median(probe_seconds):.2f} s)")
    print(f"ratio           {t_with / t_without:8.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main()
