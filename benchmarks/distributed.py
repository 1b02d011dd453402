"""Per-rank measuring time of the four probes at world size 1 and 2 (CPU, gloo), side by side in one run.

A GPT-2 (HF, width ``--width``, ``--layers`` blocks) is measured by each probe alone, ``--repeats`` times (the
median is shown), in one process and on each rank of a two-process job launched by this script under
``torchrun`` (DDP, or ``--fsdp``: FSDP2's ``fully_shard``). Every process runs one thread, so the two ranks
of the job have one core each, as the single process has. The trajectory's per-step ``observe`` (the update
of its window) is timed as well. Prints seconds per measurement and the ratio rank / one process: the
ranks split the work, so the ideal ratio is 0.5 (the rest is the exchange, the gathers of sharded matrices,
and work that is not split: the eigendecompositions of merged states on rank 0).

    python benchmarks/distributed.py [--width 256] [--layers 4] [--pool 32] [--repeats 3] [--fsdp]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import specscope as ss


def build(width: int, layers: int, pool_n: int):
    """The model (seeded), a pool of ``pool_n`` sequences of 64 tokens, and the probes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=1024, n_positions=64, bos_token_id=0,
                     eos_token_id=0, loss_type="ForCausalLM")
    model = GPT2LMHeadModel(cfg)
    pool = torch.randint(0, 1024, (pool_n, 64), generator=torch.Generator().manual_seed(1))
    probes = [ss.probes.Weights(every=0), ss.probes.Activations(pool, every=0, batch=8),
              ss.probes.Gradients(pool, every=0, batch=8, matrix="o", layer=-1),
              ss.probes.Trajectory(window=8, every=0)]
    return model, probes


def measure_times(a: argparse.Namespace, fsdp: bool) -> dict[str, float]:
    """Median seconds of each probe's measurement (and of the trajectory's observe) in this process."""
    model, probes = build(a.width, a.layers, a.pool)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    elif torch.distributed.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(model)
    out: dict[str, list[float]] = {p.name: [] for p in probes}
    out["trajectory observe"] = []
    with tempfile.TemporaryDirectory() as tmp, ss.Monitor(model, tmp, probes=probes) as mon:
        for step in range(10):  # fill the trajectory window with small updates
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            t0 = time.perf_counter()
            mon.step(step)
            out["trajectory observe"].append(time.perf_counter() - t0)
        for _ in range(a.repeats):
            for p in probes:
                t0 = time.perf_counter()
                mon.measure(100, probes=[p])
                out[p.name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--pool", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.rank_worker:
        torch.distributed.init_process_group("gloo")
        times = measure_times(a, a.fsdp)
        print("TIMES " + json.dumps({"rank": torch.distributed.get_rank(), "times": times}), flush=True)
        torch.distributed.destroy_process_group()
        return
    one = measure_times(a, fsdp=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           "--rank-worker", "--width", str(a.width), "--layers", str(a.layers), "--pool", str(a.pool),
           "--repeats", str(a.repeats)] + (["--fsdp"] if a.fsdp else [])
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    ranks = {}
    for line in done.stdout.splitlines():
        if line.startswith("TIMES "):
            got = json.loads(line[6:])
            ranks[got["rank"]] = got["times"]
    if len(ranks) != 2:
        sys.exit(f"the two-rank job failed:\n{done.stderr[-2000:]}")
    print(f"GPT-2 width {a.width}, {a.layers} blocks, pool {a.pool} x 64 tokens; one thread per process; "
          f"two ranks under {'FSDP2' if a.fsdp else 'DDP'}; median of {a.repeats}")
    print(f"{'probe':<20}{'world 1 (s)':>12}{'rank 0 (s)':>12}{'rank 1 (s)':>12}{'rank0/w1':>10}{'rank1/w1':>10}")
    for name, t in one.items():
        r0, r1 = ranks[0][name], ranks[1][name]
        print(f"{name:<20}{t:>12.4f}{r0:>12.4f}{r1:>12.4f}{r0 / t:>10.2f}{r1 / t:>10.2f}")


if __name__ == "__main__":
    main()
