"""The small GPT-2 of ``worker.py`` trained by a Lightning ``Trainer`` with the specscope callback, unchanged code.

    python tests/dist/lightning_worker.py single OUT
    torchrun --nproc_per_node 2 tests/dist/lightning_worker.py ddp OUT
    torchrun --nproc_per_node 2 tests/dist/lightning_worker.py fsdp2 OUT   # ModelParallelStrategy, fully_shard
    torchrun --nproc_per_node 2 tests/dist/lightning_worker.py fsdp1 OUT   # DDP, parameters marked as FSDP1's

The run store is ``OUT/specscope``. Step ``s`` trains on rows ``(s - 1) * GLOBAL`` to ``s * GLOBAL`` of the
dataset in every mode: one process takes them as one batch of ``GLOBAL``; under two ranks a distributed
sampler without shuffling gives rank ``r`` the rows ``r, r + 2, ...`` of them, ``GLOBAL / 2`` each, the
gradient being the mean either way. SGD with momentum, no dropout: the runs train the same weights.

FSDP1 (``strategy="fsdp"``) needs an accelerator (Lightning and torch refuse the CPU): mode ``fsdp1`` trains
under DDP with every parameter marked the way FSDP1 marks the parameters it flattened, which is what the
callback reads to refuse measuring.
"""
from __future__ import annotations

import os
import sys

import torch

from worker import GLOBAL, STEPS, model_and_data, probes


def main(mode: str, out: str) -> None:
    import lightning as L

    from specscope.integrations.lightning import SpectralCallback

    class LM(L.LightningModule):
        """The GPT-2 as a LightningModule: ``forward(ids)`` is the GPT-2's output (its logits score the pool)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, labels=None):
            return self.model(input_ids=input_ids, labels=labels)

        def configure_model(self):
            if mode == "fsdp1":
                from torch.distributed.fsdp._common_utils import _set_fsdp_flattened

                for p in self.parameters():
                    _set_fsdp_flattened(p)
            if mode == "fsdp2":  # ModelParallelStrategy leaves the sharding to the module
                from torch.distributed.fsdp import fully_shard

                for block in self.model.transformer.h:
                    fully_shard(block)
                fully_shard(self.model)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return self(x, labels=x).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    model, data = model_and_data()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    rows = torch.utils.data.TensorDataset(data[:STEPS].reshape(STEPS * GLOBAL, -1))
    # Lightning's own distributed sampler would shuffle: this one keeps the order, in one process as well
    sampler = torch.utils.data.DistributedSampler(rows, num_replicas=world, rank=rank, shuffle=False)
    loader = torch.utils.data.DataLoader(rows, batch_size=GLOBAL // world, sampler=sampler)
    if mode == "single":
        where = {"devices": 1}
    elif mode == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        where = {"devices": world, "strategy": ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)}
    else:
        where = {"devices": world, "strategy": "ddp"}
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out, use_distributed_sampler=False,
                        callbacks=[SpectralCallback(probes=probes(data[-1]))], **where)
    trainer.fit(LM(model), loader)


if __name__ == "__main__":
    main(*sys.argv[1:3])
