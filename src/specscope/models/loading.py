"""Reading weights from files without instantiating a model, safely and lazily.

Formats: a safetensors file; an HF model directory (``config.json`` with ``*.safetensors``,
sharded or not, or ``pytorch_model*.bin``); a torch checkpoint (``.pt .pth .bin .ckpt``,
loaded with ``weights_only=True`` and memory-mapped: a pickle that needs code is refused);
a directory of step-numbered checkpoints. Safetensors are never memory-mapped: their header
is validated, then each tensor is read with explicit ``pread`` calls
(:mod:`.safetensors_io`), whole (:meth:`Checkpoint.load`) or, for a matrix that is a
strided view of its stored tensor, block by block (:meth:`Checkpoint.stream`), so only the
blocks being used are resident.
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
from .ref import MatrixRef
from .safetensors_io import StridedRows, TensorInfo, read_header, read_rows

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
    infos: dict[str, TensorInfo] = field(default_factory=dict, repr=False)  # safetensors: where each tensor lies
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
        """Drop the tensor :meth:`load` keeps (returns nothing)."""
        self._last = None

    def catalog(self) -> Catalog:
        """The cataloged matrices of this checkpoint (read lazily through :meth:`load`), as for a live model."""
        info = ModelInfo.from_config(self.config)
        conv = mark_conv1d(self.shapes, info.model_type)
        stored = [Stored(n, s, (lambda n=n: self.load(n)), conv[n]) for n, s in self.shapes.items()]
        return catalog_stored(stored, info, self.skipped)

    def stream(self, ref: MatrixRef) -> Stream | None:
        """``ref`` (cataloged from this checkpoint) read from its safetensors file block by block, or
        None when it is not a strided view of its stored tensor (or the file is a torch file)."""
        info = self.infos.get(ref.param)
        if info is None or ref.take is None:
            return None
        view = strided_view(ref.take, info.shape)
        if view is None:
            return None
        offset, pitch, rows, length, shape, slices, transposed = view
        return Stream(StridedRows(info, offset, pitch, rows, length), shape, slices, transposed)


@dataclass(frozen=True)
class Stream:
    """A cataloged matrix (or pooled stack) as rows of its file, for spectra and cosines block by block.

    ``shape``: ``(m, n)`` per slice, in the file's orientation (``transposed``: the matrix's
    transpose, which has the same singular values). ``read(r0, r1, c0, c1)`` is the
    ``(r1 - r0, c1 - c0, slices)`` block :func:`specscope.spectra.compute.singular_values_streamed`
    takes; ``self[r0:r1]`` is rows ``[r0, r1)`` with every slice, a ``(r1 - r0, n * slices)``
    tensor, so :func:`specscope.spectra.temporal.cos_w_final` runs on two streams of one layout.
    Both return views of one reused buffer, valid until the next read.
    """

    rows: StridedRows
    shape: tuple[int, int]
    slices: int = 1
    transposed: bool = False

    def read(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Rows ``[r0, r1)``, columns ``[c0, c1)`` of every slice: ``(r1 - r0, c1 - c0, slices)``, stored dtype."""
        k = self.slices
        return self.rows(r0, r1, c0 * k, c1 * k).view(r1 - r0, c1 - c0, k)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """Rows ``rows`` (a step-1 slice) of every slice, ``(rows, n * slices)`` in the stored dtype."""
        r0, r1, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("a stream reads consecutive rows only")
        return self.rows(r0, max(r0, r1), 0, self.rows.length)

    def detach(self) -> Stream:
        """The stream itself (it holds no autograd graph), so functions that detach their tensors take it."""
        return self

    def layout(self) -> tuple:
        """What two streams must share for their rows to pair element for element."""
        return self.shape, self.slices, self.transposed


def strided_view(take: Callable[[torch.Tensor], torch.Tensor], stored: tuple[int, ...]
                 ) -> tuple[int, int, int, int, tuple[int, int], int, bool] | None:
    """Where the matrix ``take`` makes of a stored tensor lies in it, or None when it is not a strided view.

    ``take`` runs on a meta tensor of shape ``stored`` (no data), so the layout comes from the
    very function the catalog reads the matrix with. Returns ``(offset, pitch, rows, length,
    (m, n), slices, transposed)`` in elements: row ``r`` of the file's view is the ``length``
    elements from ``offset + r * pitch``; a 2-D matrix is ``m x n`` rows of ``n`` (or, stored
    transposed, ``n`` rows of ``m``); a stack ``slices x m x n`` with the slice index innermost
    (a convolution weight ``c_out x c_in x kernel``) is ``m`` rows of ``n * slices``.
    """
    base = torch.empty(stored, device="meta")
    try:
        v = take(base)
    except Exception:
        return None
    if not isinstance(v, torch.Tensor) or (v is not base and v._base is not base):
        return None  # a copy (a reshape that could not be a view), not a view of the stored tensor
    k = 1
    if v.ndim == 3:
        k, m, n = v.shape
        sk, sm, sn = v.stride()
        if k > 1 and sk != 1:
            return None
    elif v.ndim == 2:
        (m, n), (sm, sn) = v.shape, v.stride()
    else:
        return None
    off = v.storage_offset()
    if n == 1 or sn == k:  # rows of n (x k) consecutive elements
        if m == 1 or sm >= n * k:
            return off, sm if m > 1 else n * k, m, n * k, (m, n), k, False
    if m == 1 or sm == k:  # columns consecutive: read the transpose
        if n == 1 or sn >= m * k:
            return off, sn if n > 1 else m * k, n, m * k, (n, m), k, True
    return None


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
