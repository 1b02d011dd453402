"""Learning-rate schedules and optimizers of the reference trainer: AdamW, or Muon for the 2-D hidden
matrices with AdamW for embeddings, head and scalars; weight decay on chosen parameter groups."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError

SCHEDULES = ("constant", "cosine", "wsd", "step")
DECAY_GROUPS = ("hidden", "embed", "head", "scalar")
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def lr_at(step: int, cfg) -> float:
    """The learning rate at (0-based) ``step``: linear warm-up to ``cfg.lr``, then

    - ``constant``;
    - ``cosine`` decay to ``min_lr_ratio * lr`` at the last step;
    - ``wsd`` (warm-up, stable, decay): constant, then linear decay to ``min_lr_ratio * lr`` over the
      last ``decay_frac`` of the steps;
    - ``step``: multiplied by ``step_gamma`` at each fraction of the run in ``step_milestones``.

    Returns a float in the units of ``cfg.lr``; an unknown schedule is a :class:`ConfigError`.
    """
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * frac))
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_frac * cfg.steps))
        start = cfg.steps - decay_steps
        if step < start:
            return cfg.lr
        return cfg.lr + (lo - cfg.lr) * min(1.0, (step - start + 1) / decay_steps)
    if cfg.schedule == "step":
        drops = sum(step >= round(m * cfg.steps) for m in cfg.step_milestones)
        return cfg.lr * cfg.step_gamma ** drops
    raise ConfigError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate polar factor ``U V^T`` of ``g`` by the quintic Newton-Schulz iteration (coefficients
    (3.4445, -4.7750, 2.0315)); its singular values land near 1 (roughly in [0.7, 1.2]), not exactly on it.
    Returns a tensor shaped like ``g`` (computed in float32, returned in ``g``'s dtype)."""
    a, b, c = NS_COEFFS
    x = g.to(torch.float32)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D matrices.

    ``buf = momentum * buf + grad``; the Nesterov direction ``grad + momentum * buf`` is
    orthogonalized (5 quintic Newton-Schulz steps) and scaled by ``max(1, rows / cols) ** 0.5``;
    decoupled weight decay ``p *= 1 - lr * weight_decay``.
    """

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One Muon update of every 2-D parameter with a gradient; returns ``closure()``'s loss, or None without a
        closure. A parameter that is not 2-D is a ValueError."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim != 2:
                    raise ValueError("Muon takes 2-D matrices only")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                update = newton_schulz(g, group["ns_steps"]) * max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


class Optimizers:
    """Several optimizers stepped as one (Muon + AdamW); ``param_groups`` spans all of them (optimizers without
    parameters are dropped)."""

    def __init__(self, *opts: torch.optim.Optimizer):
        self.opts = [o for o in opts if o.param_groups]

    @property
    def param_groups(self) -> list[dict]:
        """Every optimizer's param groups, in order, as one list (the trainer sets their ``lr``)."""
        return [g for o in self.opts for g in o.param_groups]

    def step(self) -> None:
        """Step every optimizer. Returns None."""
        for o in self.opts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every optimizer's parameters (None, or zeros with ``set_to_none=False``). Returns
        None."""
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> list[dict]:
        """Every optimizer's state dict, in order: a list (what :meth:`load_state_dict` takes)."""
        return [o.state_dict() for o in self.opts]

    def load_state_dict(self, states: list[dict]) -> None:
        """Restore each optimizer from its entry of ``states`` (from :meth:`state_dict`; the lengths must match).
        Returns None."""
        for o, st in zip(self.opts, states, strict=True):
            o.load_state_dict(st)


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by role: ``hidden`` (2-D matrices inside blocks), ``embed`` (embeddings),
    ``head`` (the output layer, when not tied), ``scalar`` (norm gains, biases: fewer than 2 dims): a dict role ->
    list of parameters, each parameter once (shared weights under their first role)."""
    groups: dict[str, list[nn.Parameter]] = {k: [] for k in DECAY_GROUPS}
    seen: set[int] = set()
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2:
            groups["scalar"].append(p)
        elif id(p) in embeds:
            groups["embed"].append(p)
        elif name.startswith(("lm_head", "head", "output")) or ".lm_head." in name:
            groups["head"].append(p)
        else:
            groups["hidden"].append(p)
    return groups


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer | Optimizers:
    """AdamW on everything, or (``cfg.optimizer == "muon"``) Muon on the hidden matrices and AdamW on the rest.

    Weight decay applies to the groups in ``cfg.decay_on``. Each param group carries ``lr_scale``:
    the trainer sets ``lr = lr_at(step) * lr_scale`` (Muon's groups: ``cfg.muon_lr / cfg.lr``).
    Returns a ``torch.optim.AdamW``, or an :class:`Optimizers` of Muon and AdamW.
    """
    bad = set(cfg.decay_on) - set(DECAY_GROUPS)
    if bad:
        raise ConfigError(f"decay_on takes {DECAY_GROUPS}, got {sorted(bad)}")
    groups = parameter_groups(model)
    wd = lambda role: cfg.weight_decay if role in cfg.decay_on else 0.0  # noqa: E731
    adam_roles = [r for r in DECAY_GROUPS if not (cfg.optimizer == "muon" and r == "hidden")]
    adam = torch.optim.AdamW([{"params": groups[r], "weight_decay": wd(r), "lr_scale": 1.0} for r in adam_roles if groups[r]],
                             lr=cfg.lr, betas=cfg.betas)
    if cfg.optimizer == "adamw":
        return adam
    if cfg.optimizer != "muon":
        raise ConfigError(f"optimizer must be 'adamw' or 'muon', got {cfg.optimizer!r}")
    muon = Muon([{"params": groups["hidden"], "weight_decay": wd("hidden"), "lr_scale": cfg.muon_lr / cfg.lr}],
                lr=cfg.muon_lr, momentum=0.95, nesterov=True)
    return Optimizers(muon, adam)
