"""Per-sample gradient spectra piggybacked on the training step (SPEC 1.3 on the training batch, no extra forward).

:class:`StepGradients` measures what :class:`~specscope.probes.Gradients` measures (the singular
values of the per-sample gradient matrix ``G`` of one cataloged matrix, one row per sample), but
its samples are the training step's own batch and its gradients come from the user's own
forward and backward: hooks on the probed linear layer keep each call's input (detached) and,
when the backward reaches the layer's output, turn it with that output's gradient into the
per-sample gradients ``g_m = sum_t delta_{m,t} x_{m,t}^T`` (float64 rows); the input is dropped
then. So at most one micro-batch's layer inputs are held, plus the rows (``M x d_out*d_in``
float64, ``M`` the samples of the step) from which the Gram ``G G^T`` is taken at the monitor
step. Every micro-batch of a step with gradient accumulation adds its rows.

Timing: the monitor's ``step(N)`` comes after optimizer step ``N``; when step ``N + 1`` is due,
the probe arms its hooks at ``step(N)`` (it observes every step) and disarms them at
``step(N + 1)``, where it measures. At construction of the monitor it arms for the first step
it will see. Nothing stays on the model between due steps. Forwards run by specscope's own
measurements (another probe's pool passes) and forwards that start with grad disabled are
not captured.

Scale: the gradients the backward brings are those of the user's loss. With ``reduction="mean"``
(default) that loss is the mean of the per-sample losses over every sample of the step (with
accumulation, each micro-batch's mean divided by the number of micro-batches, equal sizes), so
each captured gradient is ``1/M`` of its sample's own and is multiplied by ``M``;
``reduction="sum"``: the loss is their sum, taken as is. A per-sample loss is what
:class:`~specscope.probes.Gradients` calls ``L_m`` (for a language model: the mean next-token
loss of one sequence, so the token-mean loss of a batch of equal-length sequences without
ignored positions is the ``"mean"`` case). A gradient scaler (fp16 ``GradScaler``) scales the
loss, and so these spectra, by its scale.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .. import measure
from ..errors import ConfigError
from ..measure.gradients import _not_hookable, in_own_passes, layer_factors
from ..models import MatrixRef, unwrap
from ..streams.grad_gram import RowGram, factor_rows
from .activations import _emit
from .base import Measurement, Probe, ProbeContext, check_choice, check_int
from .gradients import check_matrix_choice
from .schedule import ScheduleLike

_graph_task = getattr(torch._C, "_current_graph_task_id", None)


def _in_backward() -> bool:
    """True inside a backward pass (a checkpointed segment being recomputed)."""
    return _graph_task is not None and _graph_task() != -1


class _CaptureError(Exception):
    """The training step did something the capture cannot follow."""


@dataclass
class _Call:
    """One call of the probed layer: the forward it belongs to, its input until the gradient comes."""

    forward: int
    x: torch.Tensor | None
    version: int


class _Capture:
    """Hooks on one layer for one training step, and the per-sample gradient rows they produced."""

    def __init__(self, model: nn.Module, ref: MatrixRef, step: int | None):
        self.ref, self.step = ref, step
        self.rows: dict[int, torch.Tensor] = {}  # forward number -> (n, P) float64 rows, every call's share added
        self.forward, self.live, self.error, self.open = 0, True, None, True
        self.calls = 0  # calls of the layer with grad enabled: training forwards seen
        base = unwrap(model)
        self.handles = [base.register_forward_pre_hook(self._on_forward),
                        base.get_submodule(ref.source).register_forward_hook(self._on_call)]

    def __deepcopy__(self, memo: dict) -> "_Capture":
        """A copy of the armed model (an EMA copy, a snapshot) gets inert hooks: the capture stays with the model
        being trained."""
        inert = object.__new__(_Capture)
        inert.open = False
        return inert

    def close(self) -> None:
        """Remove the hooks; tensor hooks still pending on the step's outputs do nothing from now on."""
        self.open = False
        for h in self.handles:
            h.remove()
        self.handles = []

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = f"capture failed: {type(exc).__name__}: {exc}"
        self.rows.clear()

    def _on_forward(self, _mod: nn.Module, _args: Any) -> None:
        if not self.open:
            return
        self.forward += 1
        self.live = torch.is_grad_enabled()  # a forward started without grad is no training forward

    def _on_call(self, _mod: nn.Module, args: tuple, out: Any) -> None:
        try:
            if not (self.open and self.error is None and self.live and not in_own_passes() and torch.is_grad_enabled()
                    and isinstance(out, torch.Tensor) and out.requires_grad):
                return
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.ndim < 2 or out.ndim < 2 or x.shape[0] != out.shape[0]:
                raise _CaptureError("the layer's input and output are not tensors batched alike along dim 0")
            if not _in_backward() and self.forward in self.rows:  # the model was not called as a whole: a new forward
                self.forward += 1
            call = _Call(self.forward, x.detach(), x._version)
            self.calls += 1
            out.register_hook(functools.partial(self._on_grad, call))
        except Exception as exc:  # never break the user's training
            self._fail(exc)

    def _on_grad(self, call: _Call, grad: torch.Tensor) -> None:
        try:
            if not self.open or self.error is not None:
                return
            x, call.x = call.x, None
            if x is None:
                raise _CaptureError("the layer's output got a second gradient from the same forward (a backward "
                                    "with retain_graph=True): not supported")
            if x._version != call.version:
                raise _CaptureError("the layer's input was modified in place after the layer ran")
            with torch.no_grad():
                rows = factor_rows(*layer_factors(self.ref, x.shape[0], [(x, grad)]))
                kept = self.rows.get(call.forward)
                if kept is None:
                    self.rows[call.forward] = rows
                elif kept.shape != rows.shape:
                    raise _CaptureError("calls of the layer in one forward saw different batch sizes")
                else:
                    kept += rows  # the layer ran more than once in this forward: each call adds its share
        except Exception as exc:  # never break the user's training
            self._fail(exc)

    def stream(self, chunk: int, scale_by_count: bool) -> RowGram:
        """The captured per-sample gradients as a :class:`RowGram` (its ``compute()``: the float64 Gram ``G G^T``,
        M x M), rescaled to the per-sample losses' own (times ``M`` when the loss was their mean)."""
        acc = RowGram(chunk, device=next(iter(self.rows.values())).device)
        count = sum(len(rows) for rows in self.rows.values())
        for rows in self.rows.values():
            acc.update(rows * float(count) if scale_by_count else rows)
        return acc


class StepGradients(Probe):
    """Singular values of the per-sample gradient matrix of one cataloged matrix over the training step's own batch
    (SPEC 1.3, piggybacked: no extra forward; see :mod:`specscope.probes.step_gradients`).

    The matrix: as :class:`~specscope.probes.Gradients` (``matrix`` / ``layer`` / ``part`` or
    ``matrix_name``); it must be hookable, the weight of an ``nn.Linear`` / HF ``Conv1D`` called
    as a module (any other: a ``ConfigError`` at setup and a NaN row whose status says so at each
    due step; ``Gradients`` measures any matrix on a fixed pool). ``reduction``: ``"mean"``
    (default) or ``"sum"``, how the user's loss combines the per-sample losses of the step.
    ``chunk``: samples per block of the Gram. Call ``monitor.step`` after every optimizer step
    with consecutive step numbers; a due step the probe could not arm for is a NaN row saying so.
    Stored rows: as ``Gradients`` (quantity ``sv``, one value per sample of the step).
    """

    name = "step_gradients"
    needs = frozenset({"step_batch"})
    observes_every_step = True

    def __init__(self, matrix: str = "o", layer: int = -1, every: ScheduleLike = 100, at: Iterable[int] = (), chunk: int = 16,
                 name: str | None = None, *, matrix_name: str | None = None, part: int | None = None,
                 reduction: str = "mean"):
        super().__init__(every, at, name)
        self.chunk = check_int("StepGradients: chunk", chunk, 1)
        check_matrix_choice("StepGradients", matrix, layer, part, matrix_name)
        self.reduction = check_choice("StepGradients: reduction", reduction, ("mean", "sum"))
        self.matrix, self.layer, self.matrix_name, self.part = matrix, int(layer), matrix_name, part
        self._ref: MatrixRef | None = None
        self._problem: str | None = None  # why this model's matrix cannot be captured
        self._armed: _Capture | None = None  # hooks on the model for the step that is due
        self._done: _Capture | None = None  # the capture of the step being measured

    def describe(self) -> dict[str, Any]:
        """The probe's settings, as stored in the run's metadata (a dict)."""
        return {**super().describe(), "matrix": self.matrix, "layer": self.layer, "matrix_name": self.matrix_name,
                "part": self.part, "reduction": self.reduction}

    def _resolve(self, model: nn.Module, refs: Iterable[MatrixRef] | None = None) -> MatrixRef:
        """The probed matrix (a ``ConfigError`` when it is not hookable, remembered for the NaN rows)."""
        base = unwrap(model)
        try:
            ref = measure.find_matrix(base, self.matrix, self.layer, name=self.matrix_name, part=self.part, refs=refs)
            why = _not_hookable(base, ref)
        except Exception as exc:  # no such matrix, or a model whose parameters cannot be looked up by name
            self._problem = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise ConfigError(self._problem) from None
        if why is not None:
            self._ref = ref
            self._problem = (f"StepGradients (piggyback) needs a hookable layer, an nn.Linear or HF Conv1D called as a "
                             f"module: {ref.name} is not ({why}); ss.probes.Gradients measures it on a fixed pool")
            raise ConfigError(self._problem)
        self._ref, self._problem = ref, None
        return ref

    def _arm(self, model: nn.Module, step: int | None, refs: Iterable[MatrixRef] | None = None) -> None:
        self._disarm()
        self._armed = _Capture(model, self._resolve(model, refs), step)

    def _disarm(self) -> None:
        if self._armed is not None:
            self._armed.close()
            self._armed = None

    def setup(self, model: nn.Module) -> None:
        """Resolve the matrix (a ``ConfigError`` when it cannot be captured) and arm for the first step."""
        self._arm(model, None)

    def observe(self, ctx: ProbeContext) -> None:
        """At every monitor step: close the capture of this step (kept for :meth:`measure` when due), and arm the
        hooks when the next step is due."""
        cap, self._armed = self._armed, None
        if cap is not None:
            cap.close()
        self._done = cap if cap is not None and cap.step in (None, ctx.step) and self.due(ctx.step) else None
        if self._problem is None and self.due(ctx.step + 1):
            self._arm(ctx.model, ctx.step + 1, ctx.catalog)

    def measure(self, ctx: ProbeContext) -> Measurement:
        """Spectrum and metrics of the per-sample gradients of this step's batch (as ``Gradients``), or one NaN
        ``probe_error`` row whose status says why there are none. In a distributed job the step's batch is every
        rank's share of it: the ranks' per-sample gradients (each rescaled by its own sample count) are gathered
        and written by rank 0; a rank without them fails the measurement on every rank."""
        if self._done is None and self._armed is not None and self._armed.step in (None, ctx.step):
            self._done, self._armed = self._armed, None  # measured without an observe of this step first
            self._done.close()
        cap, self._done = self._done, None
        out = Measurement()
        why = self._why_none(cap, ctx.step)
        if ctx.dist is not None:  # every rank's rows, or why not: said as one process says it when all agree
            local = why if why is not None else cap.stream(self.chunk, self.reduction == "mean").state_dict()
            parts = ctx.dist.exchange(local, f"{self.name}@{ctx.step}")
            whys = [p for p in parts if isinstance(p, str)]
            if len(whys) == len(parts) and len(set(whys)) == 1:
                return self._failed(out, whys[0]) if ctx.dist.main else out
            if whys:
                raise ValueError("; ".join(f"rank {r}: {p}" for r, p in enumerate(parts) if isinstance(p, str)))
            if not ctx.dist.main:
                return out
            gram = cap.stream(self.chunk, False).folded(parts).compute()
        elif why is not None:
            return self._failed(out, why)
        else:
            gram = cap.stream(self.chunk, self.reduction == "mean").compute()
        _emit(out, cap.ref.layer, cap.ref.kind, cap.ref.name, "sv", np.sqrt(measure.desc_eigvalsh(gram)), cap.ref.part)
        return out

    def _why_none(self, cap: "_Capture | None", step: int) -> str | None:
        """Why capture ``cap`` of step ``step`` gives no spectrum (None: it gives one)."""
        if self._problem is not None:
            return self._problem
        if cap is None:
            return (f"no training step captured for step {step}: StepGradients arms itself at the monitor step "
                    f"before a due step (call monitor.step after every optimizer step, with consecutive step numbers)")
        if cap.error is not None:
            return cap.error
        if not cap.calls:
            return (f"step {step}: no training forward through {cap.ref.name} since the probe was armed (a monitor "
                    f"step before any training step?)")
        if not cap.rows:
            return (f"step {step}: the layer {cap.ref.name} got no gradient during the training step (a forward with "
                    f"grad enabled but no backward through it)")
        return None

    def _failed(self, out: Measurement, why: str) -> Measurement:
        ref = self._ref
        if ref is None:
            out.add_metric(-1, "other", "", "probe_error", math.nan, why)
        else:
            out.add_metric(ref.layer, ref.kind, ref.name, "probe_error", math.nan, why, ref.part)
        return out
