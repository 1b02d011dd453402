"""``transformers.Trainer`` callback: the specscope monitor inside HF training.

    from specscope.integrations.hf import SpectralCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[SpectralCallback(every=25)])

Measures at step 0 and every ``every`` optimizer steps (``state.global_step``), records what
the Trainer logs (loss, learning_rate, grad_norm, eval_loss, ...) as scalars, and tokens
seen when ``include_num_input_tokens_seen`` is on. Only the main process writes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from transformers import TrainerCallback

from ..monitor import Monitor
from ..probes import Probe, Weights


class SpectralCallback(TrainerCallback):
    def __init__(self, run_dir: str | os.PathLike | None = None, probes: Iterable[Probe] | None = None, every: int = 25):
        self.run_dir = run_dir
        self.probes = list(probes) if probes is not None else [Weights(every=every)]
        self.monitor: Monitor | None = None

    @staticmethod
    def _tokens(state) -> int | None:
        n = getattr(state, "num_input_tokens_seen", None)
        return int(n) if n else None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        run_dir = Path(self.run_dir) if self.run_dir is not None else Path(args.output_dir) / "specscope"
        config = {"integration": "transformers.Trainer", "learning_rate": args.learning_rate,
                  "per_device_train_batch_size": args.per_device_train_batch_size,
                  "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_steps": args.max_steps,
                  "model_type": getattr(getattr(model, "config", None), "model_type", None)}
        self.monitor = Monitor(model, run_dir, probes=self.probes, config=config)
        if state.global_step == 0:
            self.monitor.measure(0, tokens=0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            step = state.global_step
            due = [p for p in self.probes if p.due(step)]
            if due:
                self.monitor.measure(step, tokens=self._tokens(state), probes=due)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is not None and logs:
            scalars = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            self.monitor.log(state.global_step, tokens=self._tokens(state), **scalars)

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
