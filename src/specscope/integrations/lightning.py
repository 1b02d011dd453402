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

specscope's numbers also go to the trainer's loggers (``trainer.loggers``), at ``trainer.global_step``:
a ``TensorBoardLogger``'s SummaryWriter, a ``WandbLogger``'s run, an ``MLFlowLogger``'s client and run
(other loggers are left out). ``SpectralCallback(log_to=[...])`` replaces them.
"""
from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
except ImportError:  # the older package name
    from pytorch_lightning import LightningModule, Trainer
    from pytorch_lightning.callbacks import Callback
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from ._common import MonitorDriver, scalar, scalars_of


def loggers_of(trainer: Trainer) -> list[Any]:
    """The monitor's ``log_to`` for the trainer's loggers (global rank zero only; elsewhere ``[]``): each
    TensorBoard logger's SummaryWriter, each W&B logger's run, ``("mlflow", {"client": ..., "run_id": ...})`` for
    each MLflow logger, in the loggers' order: a list."""
    if not trainer.is_global_zero:
        return []
    out: list[Any] = []
    for logger in trainer.loggers:
        if isinstance(logger, (TensorBoardLogger, WandbLogger)):
            out.append(logger.experiment)
        elif isinstance(logger, MLFlowLogger):
            out.append(("mlflow", {"client": logger.experiment, "run_id": logger.run_id}))
    return out


class SpectralCallback(MonitorDriver, Callback):
    """Monitor a Lightning ``Trainer.fit`` into ``run_dir`` (default ``<default_root_dir>/specscope``).

    ``probes``: the probes to run (default ``[Weights(every=every)]``). ``log_to``: where else the measurements
    go (default: the trainer's TensorBoard / W&B / MLflow loggers).
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Open the monitor on this rank (every rank of a distributed job; global rank zero writes), appending to the
        run store when the fit resumed, and record the module before training as step 0. Returns None."""
        config = {"integration": "lightning", "max_steps": trainer.max_steps,
                  "accumulate_grad_batches": trainer.accumulate_grad_batches}
        self._open_monitor(pl_module, trainer.default_root_dir, config, trainer.global_step, log_to=loggers_of(trainer))

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
