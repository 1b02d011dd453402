"""``transformers.Trainer`` callback: the specscope monitor inside HF training.

    from specscope.integrations.hf import SpectralCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[SpectralCallback(every=25)])

Drives :class:`~specscope.Monitor` exactly as a plain loop calling ``mon.step(step, ...)`` after
each ``opt.step()``: ``Monitor.step(0)`` on the model before training, then
``Monitor.step(state.global_step)`` after every optimizer step (not per micro-batch under
gradient accumulation). Every probe schedule runs, every-``N`` probes and every-step ones such
as :class:`~specscope.probes.Trajectory`, which sees each update from the first one on. The
scalars the Trainer logs (loss, learning_rate, grad_norm, eval_loss, ...) are recorded at the
step they belong to, and tokens seen when ``include_num_input_tokens_seen`` is on.

Under ``torchrun`` (DDP, FSDP2) the same user code runs on every rank: each rank opens its monitor
in ``on_train_begin`` and steps it in ``on_step_end``, hooks the Trainer calls on every process, so
the ranks share the probes' work and their collectives line up; rank 0 alone writes the run store.
The scalars of ``on_log`` are recorded as rank 0 has them (the Trainer already reduced the loss
across ranks). A model under FSDP1 (``fsdp_config={"version": 1}``) is not measured: a warning,
and every probe records NaN once with a status naming FSDP1. (On the CPU, accelerate trains
under DDP whatever ``fsdp`` asks for.)

specscope's numbers also go where ``args.report_to`` sends the Trainer's logs, at the Trainer's
``global_step``: ``"tensorboard"`` into the Trainer's TensorBoard directory (``args.logging_dir``
where the arguments have one, else ``$TENSORBOARD_LOGGING_DIR``, else the newest
``<output_dir>/runs/*``: the Trainer's TensorBoard callback runs before user callbacks and opened
it at this train's start), ``"wandb"`` and ``"mlflow"`` into the run the Trainer's callback
started. ``SpectralCallback(log_to=[...])`` replaces them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ._common import MonitorDriver, scalars_of


def _tokens(state: TrainerState) -> int | None:
    """Input tokens seen so far, when the Trainer counts them."""
    n = getattr(state, "num_input_tokens_seen", None)
    return int(n) if n else None


def _tensorboard_dir(args: TrainingArguments) -> str:
    """The directory the Trainer's TensorBoard callback writes (see the module docstring), as a str."""
    if getattr(args, "logging_dir", None):
        return str(args.logging_dir)
    if os.environ.get("TENSORBOARD_LOGGING_DIR"):
        return os.path.expanduser(os.environ["TENSORBOARD_LOGGING_DIR"])
    runs = [p for p in (Path(args.output_dir) / "runs").glob("*") if p.is_dir()]
    return str(max(runs, key=lambda p: p.stat().st_mtime) if runs else Path(args.output_dir) / "runs" / "specscope")


def report_to(args: TrainingArguments) -> list[Any]:
    """The monitor's ``log_to`` for the Trainer's ``args.report_to``: ``("tensorboard", {"log_dir": ...})``,
    ``"wandb"``, ``"mlflow"`` for those it names (others are left out), in its order: a list."""
    names = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    return [("tensorboard", {"log_dir": _tensorboard_dir(args)}) if n == "tensorboard" else n
            for n in names if n in ("tensorboard", "wandb", "mlflow")]


class SpectralCallback(MonitorDriver, TrainerCallback):
    """Monitor an HF ``Trainer`` run into ``run_dir`` (default ``<output_dir>/specscope``).

    ``probes``: the probes to run (default ``[Weights(every=every)]``). ``log_to``: where else the measurements
    go (default: where ``args.report_to`` sends the Trainer's logs; see the module docstring).
    """

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        """Open the monitor on this process (every rank of a distributed job; rank 0 writes), appending to the run
        store when the Trainer resumed, and record the model before training as step 0. Returns None."""
        if model is None:
            return
        config = {"integration": "transformers.Trainer", "learning_rate": args.learning_rate,
                  "per_device_train_batch_size": args.per_device_train_batch_size,
                  "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_steps": args.max_steps,
                  "model_type": getattr(getattr(model, "config", None), "model_type", None)}
        self._open_monitor(model, args.output_dir, config, state.global_step, tokens=0, log_to=report_to(args))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Run the probes due at optimizer step ``state.global_step`` (once per step). Returns None."""
        # Called once per optimizer step, after it; the loss arrives in on_log.
        self._step_monitor(state.global_step, loss=None, tokens=_tokens(state))

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Record the Trainer's logged numbers (loss, learning_rate, grad_norm, eval_loss, ...) as scalars at the
        current step (rank 0's own in a distributed job: no collective here). Returns None."""
        if logs:
            self._log_monitor(state.global_step, tokens=_tokens(state), **scalars_of(logs))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """Flush and close the run store. Returns None."""
        self._close_monitor()
