"""PyTorch Lightning callback: the specscope monitor inside a ``Trainer.fit``.

    from specscope.integrations.lightning import SpectralCallback
    trainer = L.Trainer(callbacks=[SpectralCallback(every=25)])

Drives :class:`~specscope.Monitor` exactly as a plain loop calling ``mon.step(step, ...)`` after
each ``opt.step()``: ``Monitor.step(0)`` on the LightningModule before training, then
``Monitor.step(trainer.global_step)`` after every optimizer step (so gradient accumulation is
counted right). Every probe schedule runs, every-``N`` probes and every-step ones such as
:class:`~specscope.probes.Trajectory`, which sees each update from the first one on. The
training loss and the trainer's logged metrics are recorded as scalars.

Under ``torchrun`` (``strategy="ddp"``, or ``ModelParallelStrategy`` with ``fully_shard``: FSDP2)
the same user code runs on every rank: each rank opens its monitor in ``on_fit_start`` and steps it
in ``on_train_batch_end``, hooks Lightning calls on every rank, so the ranks share the probes' work
and their collectives line up; global rank zero alone writes the run store. The loss and logged
metrics given at a step are averaged over the ranks (each rank's own batch). A model under FSDP1
(``strategy="fsdp"``) is not measured: a warning, and every probe records NaN once with a
status naming FSDP1.
"""
from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning import LightningModule, Trainer
    from pytorch_lightning.callbacks import Callback

from ._common import MonitorDriver, scalar, scalars_of


class SpectralCallback(MonitorDriver, Callback):
    """Monitor a Lightning ``Trainer.fit`` into ``run_dir`` (default ``<default_root_dir>/specscope``).

    ``probes``: the probes to run (default ``[Weights(every=every)]``).
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Open the monitor on this rank (every rank of a distributed job; global rank zero writes), appending to the
        run store when the fit resumed, and record the module before training as step 0. Returns None."""
        config = {"integration": "lightning", "max_steps": trainer.max_steps,
                  "accumulate_grad_batches": trainer.accumulate_grad_batches}
        self._open_monitor(pl_module, trainer.default_root_dir, config, trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """After an optimizer step (not a micro-batch of gradient accumulation): run the probes due at
        ``trainer.global_step`` and record the batch's loss and the trainer's logged metrics. Returns None."""
        # global_step counts optimizer steps: a micro-batch inside gradient accumulation leaves it unchanged
        if self.monitor is None or trainer.global_step == self._last_step:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        scalars = scalars_of(trainer.callback_metrics)
        scalars.pop("loss", None)
        self._step_monitor(trainer.global_step, loss=scalar(loss), **scalars)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Flush and close the run store. Returns None."""
        self._close_monitor()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Flush and close the run store, keeping what was measured; the exception goes on. Returns None."""
        self._close_monitor()  # keep what was measured
