"""One training of a small HF GPT-2 with the four probes, in one process or under torchrun (DDP or FSDP2).

    python tests/dist/worker.py single OUT
    torchrun --nproc_per_node 2 tests/dist/worker.py ddp OUT [SCENARIO]
    torchrun --nproc_per_node 2 tests/dist/worker.py fsdp OUT [SCENARIO]

SCENARIO ``fail``: the activation probe's forward fails on rank 1 only. ``lost``: rank 1 stops calling
``mon.step`` after step 2 (the monitor's timeout is 5 s). ``sketch``: the trajectory is sketched. ``loop`` /
``func``: per-sample gradients by a loop of backward passes / ``torch.func`` instead of hooks. ``closed``: OUT holds
a finished run; every rank prints the error the monitor raises and exits 0.

Every run sees the same global batches: one process takes all ``GLOBAL`` rows of a step's batch, rank ``r``
of ``w`` takes rows ``r * GLOBAL / w`` to ``(r + 1) * GLOBAL / w``; the gradient is their mean either way.
"""
from __future__ import annotations

import os
import sys

import torch

import specscope as ss

GLOBAL, SEQ, VOCAB, STEPS = 8, 16, 64, 6


def model_and_data():
    """The model (seeded) and the global batches, a ``STEPS x GLOBAL x SEQ`` int64 tensor."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM")
    model = GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, VOCAB, (STEPS + 1, GLOBAL, SEQ), generator=g)
    return model, data


def probes(pool, scenario: str = "", rank: int = 0):
    """All four views (and the per-sample gradients of the training batch), due at every other step."""
    def failing(model, batch):
        if rank == 1:
            raise RuntimeError("forward failed on this rank")
        return model(batch)

    return [ss.probes.Weights(every=2),
            ss.probes.Activations(pool, every=2, batch=3, forward_fn=failing if scenario == "fail" else None),
            ss.probes.Gradients(pool, every=2, batch=3, matrix="o", layer=-1,
                                method=scenario if scenario in ("loop", "func") else "auto"),
            ss.probes.Trajectory(window=4, every=2, mode="sketch" if scenario == "sketch" else "exact", k=512),
            ss.probes.StepGradients(matrix="mlp_in", layer=0, every=2)]


def main(mode: str, out: str, scenario: str = "") -> None:
    model, data = model_and_data()
    pool = data[-1]
    rank, world = 0, 1
    if mode != "single":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if mode == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for block in model.transformer.h:
                fully_shard(block)
            fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per = GLOBAL // world
    try:
        mon = ss.Monitor(model, out, probes=probes(pool, scenario, rank), timeout_s=5 if scenario == "lost" else 60)
    except ss.errors.ConfigError as exc:
        print(f"CONFIGERROR rank {rank}: {exc}", flush=True)
        torch.distributed.destroy_process_group()
        return
    with mon:
        mon.step(0)
        for step in range(1, STEPS + 1):
            x = data[step - 1, rank * per:(rank + 1) * per]
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if not (scenario == "lost" and rank == 1 and step > 2):
                mon.step(step, loss=loss.item(), tokens=step * GLOBAL * SEQ)
    if mode != "single":
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
