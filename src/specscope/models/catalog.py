"""Matrix catalog: every weight of 2 or more dims named by ``(layer, kind, part)`` (SPEC 1.1).

Works on a live ``nn.Module`` (:func:`catalog`) or on stored tensors read lazily from a file
(:func:`catalog_stored`) with the same rules, which read names and shapes only: a model and
its saved weights give the same list. Wrappers (DDP / FSDP ``module.``, ``torch.compile``'s
``_orig_mod.``, FSDP / activation-checkpoint wrappers, PEFT) are peeled first. In a model
with a block list (``blocks.N``, ``h.N``, ``layers.N``, ``layer.N``, ``block.N``) ``layer`` is
the block index and matrices outside the blocks get -1; in a model without one, ``layer`` is
the order of appearance in depth (the matrices of one module, or of one recurrent layer,
share it). What is not cataloged (1-D parameters, biases, buffers, non-float tensors,
adapters) is counted in :attr:`Catalog.skipped` and logged.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable

import torch
from torch import nn

from .families import Context, Part, Stored, gpt2_conv1d, matrix_name, moe_parents, rnn_gates, split, split_name
from .kinds import OUTSIDE_KINDS
from .ref import MatrixRef
from .sharded import whole

log = logging.getLogger(__name__)

_WRAPPER_PARTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "base_layer"})
_ADAPTER_PREFIXES = ("lora_", "hada_", "lokr_", "ia3_")
_READABLE = ("F16", "BF16", "F32", "F64")  # safetensors dtype names


class Catalog(list):
    """A list of :class:`MatrixRef` in order of appearance, with ``skipped``: reason -> count of tensors not
    cataloged."""

    def __init__(self, refs: Iterable[MatrixRef] = (), skipped: dict[str, int] | None = None):
        super().__init__(refs)
        self.skipped: dict[str, int] = dict(skipped or {})

    def summary(self) -> dict:
        """Counts for logs and run metadata: ``{"matrices": int, "skipped": {reason: count}}``."""
        return {"matrices": len(self), "skipped": dict(self.skipped)}


@dataclass(frozen=True)
class ModelInfo:
    """What the split rules read from a model's config (live ``model.config`` or ``config.json``)."""

    model_type: str | None = None
    n_heads: int | None = None
    hidden: int | None = None

    @classmethod
    def from_config(cls, cfg) -> "ModelInfo":
        """The model type, attention heads and hidden width read from a config (a dict, an object with attributes, or
        None); each field None where the config does not say."""
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))

        def first_int(*keys):
            for k in keys:
                v = get(k, None)
                if isinstance(v, int) and not isinstance(v, bool):
                    return v
            return None

        if cfg is None:
            return cls()
        mt = get("model_type", None)
        return cls(mt if isinstance(mt, str) else None, first_int("num_attention_heads", "n_head", "n_heads"),
                   first_int("hidden_size", "n_embd", "d_model", "dim"))


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / FSDP1, ``torch.compile`` and PEFT wrappers (``model`` itself when
    unwrapped): the innermost ``nn.Module``."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        name = type(model).__name__
        if name in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel") and isinstance(
                getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif name.startswith("Peft") and isinstance(getattr(model, "base_model", None), nn.Module):
            inner = model.base_model
            model = inner.model if isinstance(getattr(inner, "model", None), nn.Module) else inner
    return model


def normalize_name(name: str) -> str | None:
    """A parameter name without wrapper components (``module.``, ``_orig_mod.``, PEFT's ``base_model.model.``...), a
    str; None for an adapter's own parameter (LoRA and the like)."""
    parts = [p for p in name.split(".") if p not in _WRAPPER_PARTS]
    if any(p.startswith(_ADAPTER_PREFIXES) for p in parts):
        return None
    while parts[:1] == ["module"] or parts[:2] == ["base_model", "model"]:
        parts = parts[1:] if parts[0] == "module" else parts[2:]
    return ".".join(parts)


def skip_reason(name: str, shape: tuple[int, ...], dtype: torch.dtype | str) -> str | None:
    """Why a tensor is not cataloged, as the reason counted in :attr:`Catalog.skipped` (``"1-D tensors"``,
    ``"biases"``, ``"non-float dtype"``...), or None when it is."""
    leaf = split_name(name)[1]
    if len(shape) < 2:
        return f"{len(shape)}-D tensors"
    if leaf.endswith("bias") or leaf.startswith("bias_"):
        return "biases"
    dname = str(dtype).removeprefix("torch.").upper()
    if dname in _READABLE or dname in ("FLOAT16", "BFLOAT16", "FLOAT32", "FLOAT64"):
        return None
    return "float8 dtype (not read)" if dname.startswith(("F8", "FLOAT8")) else "non-float dtype"


def catalog_stored(stored: Iterable[Stored], info: ModelInfo | None = None,
                   skipped: dict[str, int] | None = None) -> Catalog:
    """Catalog stored parameters (named and marked transposed already), in order of appearance: a :class:`Catalog`
    (``skipped`` carried over). Matrices outside the blocks get layer -1; in a model without blocks each unit's
    matrices get their order of appearance in depth as the layer."""
    stored = list(stored)
    info = info or ModelInfo()
    shapes = {st.name: st.shape for st in stored}
    ctx = Context(info.n_heads, info.hidden, moe_parents(shapes), rnn_gates(shapes), info.model_type)
    parts: list[tuple[Stored, Part]] = [(st, p) for st in stored for p in split(st, ctx)]
    has_blocks = any(p.layer is not None for _, p in parts)
    order: dict[str, int] = {}
    refs = []
    for st, p in parts:
        if p.kind in OUTSIDE_KINDS or (has_blocks and p.layer is None):
            layer = -1 if p.kind in OUTSIDE_KINDS or p.layer is None else p.layer
        elif p.layer is not None:
            layer = p.layer
        else:
            layer = order.setdefault(p.unit, len(order))
        refs.append(_ref(st, p, layer))
    return Catalog(refs, skipped)


def _ref(st: Stored, p: Part, layer: int) -> MatrixRef:
    load, take = st.load, p.take
    return MatrixRef(p.name, layer, p.kind, lambda: take(whole(load())), p.shape, split_name(st.param or st.name)[0],
                     p.out_index, p.part, st.param or st.name, take, p.slices)


def catalog(model: nn.Module) -> Catalog:
    """Every weight of 2 or more dims of ``model``, each once (tied weights under their first name): a
    :class:`Catalog` of :class:`MatrixRef` reading the live parameters, with the tensors left out counted by reason.

    ``param`` and ``source`` of each entry are relative to :func:`unwrap` ``(model)``.
    """
    base = unwrap(model)
    skipped: Counter = Counter()
    stored: list[Stored] = []
    for pname, p in base.named_parameters():
        name = normalize_name(pname)
        if name is None:
            skipped["adapter parameters"] += 1
            continue
        why = skip_reason(name, tuple(p.shape), p.dtype)
        if why:
            skipped[why] += 1
            continue
        mod = split_name(pname)[0]
        conv1d = p.ndim == 2 and type(base.get_submodule(mod)).__name__ == "Conv1D"
        stored.append(Stored(name, tuple(int(s) for s in p.shape), (lambda p=p: p.detach()), conv1d, pname))
    n_buffers = sum(1 for _ in base.named_buffers())
    if n_buffers:
        skipped["buffers"] += n_buffers
    cat = catalog_stored(stored, ModelInfo.from_config(getattr(base, "config", None)), dict(skipped))
    cat[:] = [_mark_hookable(base, r) for r in cat]
    log_catalog(type(base).__name__, cat)
    return cat


def _mark_hookable(base: nn.Module, ref: MatrixRef) -> MatrixRef:
    if not ref.param.endswith(".weight") or ref.slices != 1:
        return ref
    mod = base.get_submodule(ref.source)
    parent = base.get_submodule(ref.source.rpartition(".")[0]) if "." in ref.source else None
    if isinstance(parent, nn.MultiheadAttention):  # its out_proj weight is used directly, never called as a module
        return ref
    linear = isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"
    return replace(ref, hookable=linear) if linear else ref


def log_catalog(what: str, cat: Catalog) -> None:
    """Log a catalog's counts (INFO; a WARNING when it is empty): what will be measured, what is not and why. Returns
    None."""
    kinds = Counter(r.kind for r in cat)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(cat.skipped.items())) or "nothing"
    log.info("catalog of %s: %d matrices (%s); not cataloged: %s", what, len(cat),
             ", ".join(f"{k} {n}" for k, n in kinds.items()), skipped)
    if not cat:
        log.warning("catalog of %s: no weight of 2 or more dims; nothing to measure", what)


def mark_conv1d(names_shapes: dict[str, tuple[int, ...]], model_type: str | None) -> dict[str, bool]:
    """For parameters read from a file: which are HF GPT-2 ``Conv1D`` weights (stored ``d_in x d_out``), as a dict
    name -> bool over every name of ``names_shapes``."""
    qkv = [s for n, s in names_shapes.items() if matrix_name(n).endswith("attn.c_attn") and len(s) == 2]
    qkv_conv1d = bool(qkv) and qkv[0][1] == 3 * qkv[0][0]
    return {n: split_name(n)[1] == "weight" and gpt2_conv1d(split_name(n)[0], model_type, s, qkv_conv1d)
            for n, s in names_shapes.items()}

