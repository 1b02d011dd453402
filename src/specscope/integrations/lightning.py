"""PyTorch Lightning callback: the specscope monitor inside a ``Trainer.fit``.

    from specscope.integrations.lightning import SpectralCallback
    trainer = L.Trainer(callbacks=[SpectralCallback(every=25)])

Measures the LightningModule at step 0 and every ``every`` optimizer steps
(``trainer.global_step``, so gradient accumulation is counted right), and records the training
loss and the trainer's logged metrics as scalars. Only global rank zero writes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning.callbacks import Callback

from ..monitor import Monitor
from ..probes import Probe, Weights


def _scalar(v) -> float | None:
    """A logged value as a float; None for anything that is not one number."""
    try:
        return float(v.detach().item() if hasattr(v, "detach") else v)
    except (TypeError, ValueError, RuntimeError):
        return None


class SpectralCallback(Callback):
    def __init__(self, run_dir: str | os.PathLike | None = None, probes: Iterable[Probe] | None = None, every: int = 25):
        self.run_dir = run_dir
        self.probes = list(probes) if probes is not None else [Weights(every=every)]
        self.monitor: Monitor | None = None
        self._last_step = -1

    def on_fit_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        run_dir = Path(self.run_dir) if self.run_dir is not None else Path(trainer.default_root_dir) / "specscope"
        config = {"integration": "lightning", "max_steps": trainer.max_steps,
                  "accumulate_grad_batches": trainer.accumulate_grad_batches}
        self.monitor = Monitor(pl_module, run_dir, probes=self.probes, config=config)
        self._last_step = trainer.global_step
        if trainer.global_step == 0:
            self.monitor.measure(0, tokens=None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.monitor is None or trainer.global_step == self._last_step:
            return  # a micro-batch inside gradient accumulation
        self._last_step = step = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        scalars = {k: s for k, v in trainer.callback_metrics.items() if (s := _scalar(v)) is not None}
        scalars.pop("loss", None)
        self.monitor.step(step, loss=_scalar(loss) if loss is not None else None, **scalars)

    def on_fit_end(self, trainer, pl_module):
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None

    def on_exception(self, trainer, pl_module, exception):
        self.on_fit_end(trainer, pl_module)  # keep what was measured
