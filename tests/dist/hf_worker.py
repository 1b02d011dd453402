"""The small GPT-2 of ``worker.py`` trained by ``transformers.Trainer`` with the specscope callback, unchanged code.

    python tests/dist/hf_worker.py single OUT
    torchrun --nproc_per_node 2 tests/dist/hf_worker.py ddp OUT
    torchrun --nproc_per_node 2 tests/dist/hf_worker.py fsdp2 OUT
    torchrun --nproc_per_node 2 tests/dist/hf_worker.py fsdp1 OUT

The run store is ``OUT/specscope``. Step ``s`` trains on rows ``(s - 1) * GLOBAL`` to ``s * GLOBAL`` of the
dataset in every mode: one process takes them as one batch of ``GLOBAL``; under two ranks each rank takes
``GLOBAL / 2`` of them (which ones is the Trainer's sampler's choice), the gradient being the mean either way.
Plain SGD, constant learning rate, no clipping, no dropout: the runs train the same weights.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from worker import GLOBAL, STEPS, model_and_data, probes


def main(mode: str, out: str) -> None:
    import transformers

    from specscope.integrations.hf import SpectralCallback

    model, data = model_and_data()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rows = data[:STEPS].reshape(STEPS * GLOBAL, -1)
    dataset = [{"input_ids": r, "labels": r} for r in rows]
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    extra = {"train_sampling_strategy": "sequential"} if "train_sampling_strategy" in fields else {}
    if mode.startswith("fsdp"):
        extra.update(fsdp="full_shard", fsdp_config={"version": int(mode[-1]),
                                                      "transformer_layer_cls_to_wrap": ["GPT2Block"]})
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=STEPS, per_device_train_batch_size=GLOBAL // world, optim="sgd", learning_rate=0.1,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0,
        include_num_input_tokens_seen=True, **extra)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset,
                                   callbacks=[SpectralCallback(probes=probes(data[-1]))])
    trainer.train()


if __name__ == "__main__":
    main(*sys.argv[1:3])
