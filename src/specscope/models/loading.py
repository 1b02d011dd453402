"""Reading weights from files without instantiating a model, safely and lazily.

Formats: a safetensors file; an HF model directory (``config.json`` with ``*.safetensors``,
sharded or not, or ``pytorch_model*.bin``); a torch checkpoint (``.pt .pth .bin .ckpt``,
loaded with ``weights_only=True`` and memory-mapped: a pickle that needs code is refused);
a directory of step-numbered checkpoints. Safetensors are read tensor by tensor through a
memory map, so peak memory stays near the largest tensor.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError
from .catalog import Catalog, ModelInfo, catalog_stored, mark_conv1d, normalize_name, skip_reason
from .families import Stored
from .safetensors_io import TensorInfo, read_header, read_rows, row_blocks

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_STEP = re.compile(r"(\d+)")


@dataclass
class Checkpoint:
    """One loadable checkpoint: its tensors of 2 or more dims by (unwrapped) name, lazily loaded."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    loader: Callable[[str], torch.Tensor]
    config: dict = field(default_factory=dict, repr=False)
    step: int | None = None
    infos: dict[str, TensorInfo] = field(default_factory=dict, repr=False)  # safetensors: stream row blocks
    skipped: dict[str, int] = field(default_factory=dict)
    _last: tuple[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def model_type(self) -> str | None:
        return ModelInfo.from_config(self.config).model_type

    def load(self, name: str) -> torch.Tensor:
        """The stored tensor ``name``; the last one is kept, so fused splits read it once."""
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        self._last = None  # drop the previous tensor before loading the next
        t = self.loader(name)
        self._last = (name, t)
        return t

    def release(self) -> None:
        self._last = None

    def catalog(self) -> Catalog:
        info = ModelInfo.from_config(self.config)
        conv = mark_conv1d(self.shapes, info.model_type)
        stored = [Stored(n, s, (lambda n=n: self.load(n)), conv[n],
                         (lambda n=n: row_blocks(self.infos[n])) if n in self.infos and len(s) == 2 else None)
                  for n, s in self.shapes.items()]
        return catalog_stored(stored, info, self.skipped)


def _keep(key: str, shape: tuple[int, ...], dtype, skipped: Counter) -> str | None:
    """The unwrapped name of a stored tensor to catalog, or None (counted in ``skipped``)."""
    name = normalize_name(key)
    if name is None:
        skipped["adapter parameters"] += 1
        return None
    why = skip_reason(name, shape, dtype)
    if why:
        skipped[why] += 1
        return None
    return name


def _safetensors_files(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], Callable[[str], torch.Tensor],
                                                     dict[str, TensorInfo], dict[str, int]]:
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, TensorInfo] = {}
    skipped: Counter = Counter()
    for f in files:
        infos, _ = read_header(f)
        for key, info in infos.items():
            name = _keep(key, tuple(info.shape), info.dtype, skipped)
            if name is None:
                continue
            shapes[name] = tuple(int(x) for x in info.shape)
            where[name] = info

    def load(name: str) -> torch.Tensor:
        info = where[name]
        return read_rows(info, 0, info.shape[0])

    return _in_depth_order(shapes), load, where, dict(skipped)


def _in_depth_order(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Safetensors headers do not keep the order the model registered its parameters in: natural sort."""
    key = lambda n: [int(t) if t.isdigit() else t for t in _STEP.split(n)]  # noqa: E731
    return {n: shapes[n] for n in sorted(shapes, key=key)}


def torch_load_safe(path: Path) -> object:
    """``torch.load`` with ``weights_only=True``: a pickle that needs code is refused, never run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: (GLOBAL \S+)|Unsupported operand \d+|[Uu]nsupported class \S+", str(exc))
        why = f" ({found.group(0)})" if found else ""
        raise CheckpointError(f"refusing to load {path}: unpickling it would run code{why}; "
                              "only plain weights are loaded (weights_only=True)") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read torch checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path} holds no state dict of tensors")


def _torch_files(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], Callable[[str], torch.Tensor],
                                              dict[str, TensorInfo], dict[str, int]]:
    shapes: dict[str, tuple[int, ...]] = {}
    tensors: dict[str, torch.Tensor] = {}
    skipped: Counter = Counter()
    for f in files:
        sd = _state_dict(torch_load_safe(f), f)
        for key, t in sd.items():
            name = _keep(key, tuple(t.shape), t.dtype, skipped)
            if name is None:
                continue
            shapes[name] = tuple(int(x) for x in t.shape)
            tensors[name] = t
    return shapes, tensors.__getitem__, {}, dict(skipped)


def _read_config(d: Path) -> dict:
    p = d / "config.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {p}: {exc}") from None


def _safetensors_config(f: Path) -> dict:
    """The reference trainer stores its model config in the safetensors metadata."""
    try:
        return json.loads(read_header(f)[1].get("config", "{}"))
    except (CheckpointError, ValueError):
        return {}


def open_checkpoint(path: str | Path, step: int | None = None) -> Checkpoint:
    """One checkpoint from a safetensors file, a torch file, or an HF model directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such file or directory: {p}")
    cfg: dict = {}
    if p.is_dir():
        cfg = _read_config(p)
        st = sorted(p.glob("*.safetensors"))
        pt = sorted(f for f in p.iterdir() if f.is_file() and _is_torch_weights(f))
        if st:
            shapes, load, infos, skipped = _safetensors_files(st)
        elif pt:
            shapes, load, infos, skipped = _torch_files(pt)
        else:
            raise CheckpointError(f"no model weights (*.safetensors, pytorch_model*.bin) in {p}")
    elif p.suffix == ".safetensors":
        shapes, load, infos, skipped = _safetensors_files([p])
        cfg = _safetensors_config(p)
    elif p.suffix in TORCH_SUFFIXES:
        shapes, load, infos, skipped = _torch_files([p])
    else:
        raise CheckpointError(f"unrecognized checkpoint format: {p} (expected .safetensors, {', '.join(TORCH_SUFFIXES)} or a model directory)")
    if not shapes:
        why = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())) or "nothing"
        raise CheckpointError(f"no weight of 2 or more dims in a readable dtype (float16, bfloat16, float32, float64) "
                              f"in {p}; not cataloged: {why}")
    return Checkpoint(p, shapes, load, cfg, step, infos=infos, skipped=skipped)


def _is_torch_weights(f: Path) -> bool:
    """A torch file of model weights (not the optimizer / scheduler / RNG / arguments files trainers save beside them)."""
    return f.suffix in TORCH_SUFFIXES and not f.name.startswith(("optimizer", "scheduler", "rng_state", "training_args"))


def _is_checkpoint(p: Path) -> bool:
    if p.is_file():
        return p.suffix == ".safetensors" or _is_torch_weights(p)
    return p.is_dir() and (any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin")))


def step_checkpoints(d: Path) -> list[tuple[int, Path]]:
    """Step-numbered checkpoints inside ``d`` (``step_0001000.safetensors``, ``checkpoint-500/``, ``ckpt_20.pt``...)."""
    if (d / "checkpoints").is_dir():  # a specscope run directory
        d = d / "checkpoints"
    found = []
    for child in d.iterdir():
        if child.name.startswith("."):
            continue
        nums = _STEP.findall(child.stem if child.is_file() else child.name)
        if nums and _is_checkpoint(child):
            found.append((int(nums[-1]), child))
    return sorted(found)


def resolve(path: str | Path) -> list[Checkpoint]:
    """Every checkpoint ``path`` names: one, or a step-ordered series.

    A directory with ``config.json`` is one model (an HF model directory). Otherwise, a
    directory holding step-numbered checkpoints (files or sub-directories, or a run
    directory's ``checkpoints/``) is a series; a directory of weight files is one model.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such file or directory: {p}")
    if p.is_dir() and not (p / "config.json").is_file():
        series = step_checkpoints(p)
        if series:
            return [open_checkpoint(c, step) for step, c in series]
        if not _is_checkpoint(p):
            raise CheckpointError(f"no model or step-numbered checkpoints in {p}")
    return [open_checkpoint(p)]
