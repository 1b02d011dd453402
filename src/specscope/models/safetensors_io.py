"""A small reader of the safetensors format that reads with ``pread``, never ``mmap``.

Memory-mapped reads leave every touched page of the file resident (and counted in RSS)
until the mapping goes, so analyzing a file larger than RAM would fill memory with file
pages. Reading explicit byte ranges keeps the resident set to what is being used: one
tensor, or one block of rows of it.

Format: 8-byte little-endian header length N, N bytes of UTF-8 JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``),
then the data; offsets are relative to the end of the header.

The header is untrusted input: :func:`read_header` validates all of it before any tensor
is read, with the rules of the reference (Rust) reader: known dtypes, non-negative integer
shapes and offsets, ``end - begin == numel * dtype size``, and offsets that tile the data
section exactly (sorted by offset, each tensor starts where the previous one ends and the
last ends at the end of the file: no overlaps, no holes, no trailing bytes). Every violation
is a one-line :class:`CheckpointError` naming the file and the entry.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import CheckpointError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
# Bits per element of every dtype the format defines (what safetensors 0.8 accepts); sub-byte
# types (F4, F6_*) are packed, so their element count times bits must be a whole number of bytes.
BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
        "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
        "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
MAX_HEADER = 100 * 2**20
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in its file: dtype, shape and absolute byte range ``[begin, end)``."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int

    @property
    def row_bytes(self) -> int:
        """Bytes per index of the first dimension (0 for a scalar or an empty tensor)."""
        return (self.end - self.begin) // self.shape[0] if self.shape and self.shape[0] else 0


def _show(value: Any, limit: int = 60) -> str:
    """A short one-line ``repr`` of a header value or name for an error message."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _fail(path: Path, problem: str) -> CheckpointError:
    """The error for a malformed file (every message starts ``cannot read safetensors file``)."""
    return CheckpointError(f"cannot read safetensors file {path}: {problem}")


def _is_count(value: Any) -> bool:
    """A non-negative JSON integer (``bool`` is an ``int`` in Python but not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook: a repeated key would make a tensor's meaning ambiguous."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {_show(k)}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    """``json`` hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    """The header bytes as a JSON object (strict UTF-8, no duplicate keys)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"header is not valid UTF-8 (byte {exc.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except ValueError as exc:
        raise _fail(path, f"header is not valid JSON ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise _fail(path, "header is not valid JSON (nested too deeply)") from None
    if not isinstance(header, dict):
        raise _fail(path, f"header is a JSON {type(header).__name__}, not an object")
    return header


def _metadata(path: Path, meta: Any) -> dict[str, str]:
    """``__metadata__``: absent (or null, as the reference reader allows) or a str -> str object."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise _fail(path, f"__metadata__ is a {type(meta).__name__}, not an object of strings")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise _fail(path, f"__metadata__ entry {_show(k)} is {_show(v)}, not a string")
    return meta


def _numel(shape: tuple[int, ...], cap: int) -> int:
    """Product of ``shape``, or a partial product once it exceeds ``cap`` (any such value is too big)."""
    if 0 in shape:
        return 0
    n = 1
    for s in shape:
        n *= s
        if n > cap:
            return n
    return n


def _entry(path: Path, name: str, h: Any, data_len: int) -> tuple[str, tuple[int, ...], int, int]:
    """One tensor entry checked on its own: ``(dtype, shape, begin, end)`` relative to the data."""
    where = f"tensor {_show(name)}"
    if not isinstance(h, dict):
        raise _fail(path, f"{where}: entry is a {type(h).__name__}, not an object")
    if set(h) != _ENTRY_KEYS:
        missing, extra = sorted(_ENTRY_KEYS - set(h)), sorted(set(h) - _ENTRY_KEYS)
        raise _fail(path, f"{where}: entry must have exactly dtype, shape, data_offsets"
                          f" (missing {missing}, unexpected {_show(extra)})")
    dtype, shape, offsets = h["dtype"], h["shape"], h["data_offsets"]
    if not isinstance(dtype, str) or dtype not in BITS:
        raise _fail(path, f"{where}: unknown dtype {_show(dtype)}")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise _fail(path, f"{where}: shape {_show(shape)} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise _fail(path, f"{where}: data_offsets {_show(offsets)} is not a list of two non-negative integers")
    b, e = offsets
    if b > e:
        raise _fail(path, f"{where}: data_offsets begin {b} > end {e}")
    if e > data_len:
        raise _fail(path, f"{where}: ends at data byte {e}, past the {data_len}-byte data section (truncated file?)")
    bits = _numel(tuple(shape), 8 * data_len) * BITS[dtype]
    if bits > 8 * data_len:
        raise _fail(path, f"{where}: dtype {dtype} and shape {_show(shape)} need more than the "
                          f"{data_len}-byte data section")
    if bits % 8:
        raise _fail(path, f"{where}: dtype {dtype} and shape {_show(shape)} are not a whole number of bytes")
    if e - b != bits // 8:
        raise _fail(path, f"{where}: data_offsets span {e - b} bytes, but dtype {dtype} and shape "
                          f"{_show(shape)} need {bits // 8}")
    return dtype, tuple(shape), b, e


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """Sorted by offset, the tensors must cover ``[0, data_len)`` exactly: no overlap, no hole."""
    pos, prev = 0, None
    for b, e, name in sorted(spans):
        if b < pos:
            raise _fail(path, f"tensor {_show(name)} [{b}, {e}) overlaps tensor {_show(prev)} ending at {pos}")
        if b > pos:
            raise _fail(path, f"tensor {_show(name)} starts at {b}, leaving a hole [{pos}, {b}) in the data"
                              " (tensors must cover the data section contiguously)")
        pos, prev = e, name
    if pos != data_len and prev is None:
        raise _fail(path, f"{data_len}-byte data section but no tensors (tensors must cover the data section"
                          " contiguously)")
    if pos != data_len:
        raise _fail(path, f"{data_len - pos} bytes after the last tensor ({_show(prev)} ends at {pos} of a "
                          f"{data_len}-byte data section; tensors must cover the data section contiguously)")


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor infos and metadata of a validated header; any malformed file raises :class:`CheckpointError`."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _fail(path, "shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n == 0:
            raise _fail(path, "header length is 0")
        if n > MAX_HEADER:
            raise _fail(path, f"header length {n} exceeds the {MAX_HEADER}-byte limit")
        if 8 + n > size:
            raise _fail(path, f"header length {n} does not fit a {size}-byte file")
        raw = f.read(n)
    if len(raw) != n:
        raise _fail(path, "file shrank while its header was read")
    header = _parse(path, raw)
    meta = _metadata(path, header.pop("__metadata__", None))
    start, data_len = 8 + n, size - 8 - n
    entries = {name: _entry(path, name, h, data_len) for name, h in header.items()}
    _check_tiling(path, [(b, e, name) for name, (_, _, b, e) in entries.items()], data_len)
    infos = {name: TensorInfo(path, dtype, shape, start + b, start + e) for name, (dtype, shape, b, e) in entries.items()}
    return infos, meta


def _pread_into(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Fill ``view`` with the file's bytes from ``offset`` (``pread`` until full)."""
    got = 0
    while got < len(view):
        k = os.preadv(fd, [view[got:]], offset + got)
        if k <= 0:
            raise CheckpointError(f"cannot read {path}: unexpected end of file")
        got += k


def _checked_dtype(info: TensorInfo) -> torch.dtype:
    """The torch dtype of a tensor this reader can return (others: one-line :class:`CheckpointError`)."""
    if info.dtype not in DTYPES:
        raise CheckpointError(f"cannot read dtype {info.dtype} of {info.path}")
    return DTYPES[info.dtype]


def read_rows(info: TensorInfo, r0: int, r1: int) -> torch.Tensor:
    """Rows ``[r0, r1)`` of a tensor (all of it for ``0, shape[0]``), read with ``pread``.

    Reads only inside ``[info.begin, info.end)``; a row range outside ``[0, shape[0]]`` is a
    caller bug (``ValueError``), a byte range outside the tensor a corrupt ``TensorInfo``.
    """
    dtype = _checked_dtype(info)
    if not info.shape or not 0 <= r0 <= r1 <= info.shape[0]:
        raise ValueError(f"rows [{r0}, {r1}) out of range for shape {info.shape} of {info.path}")
    rb = info.row_bytes
    lo, hi = info.begin + r0 * rb, info.begin + r1 * rb
    if not info.begin <= lo <= hi <= info.end:
        raise CheckpointError(f"cannot read {info.path}: rows [{r0}, {r1}) lie outside tensor bytes "
                              f"[{info.begin}, {info.end})")
    buf = bytearray(hi - lo)
    fd = os.open(info.path, os.O_RDONLY)
    try:
        _pread_into(fd, memoryview(buf), lo, info.path)
    finally:
        os.close(fd)
    if not buf:
        return torch.empty((r1 - r0, *info.shape[1:]), dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(r1 - r0, *info.shape[1:])


def row_blocks(info: TensorInfo, max_bytes: int = 8 * 2**20) -> Iterator[torch.Tensor]:
    """The tensor as consecutive blocks of rows of at most ``max_bytes`` each."""
    rows = max(1, max_bytes // max(1, info.row_bytes))
    for r0 in range(0, info.shape[0], rows):
        yield read_rows(info, r0, min(info.shape[0], r0 + rows))


class StridedRows:
    """Rows of a strided 2-D view of one stored tensor, read block by block with ``pread``.

    Row ``r`` (``0 <= r < rows``) is the ``length`` consecutive elements of the tensor (in
    its stored, row-major order) starting at element ``offset + r * pitch``: the whole
    tensor seen as ``shape[0] x rest`` (``offset 0, pitch = length = rest``), a range of its
    rows, one matrix of a packed stack, every other row (``pitch = 2 * length``), or the
    rows of a stored matrix whose transpose is the matrix of interest. ``self(r0, r1, e0, e1)``
    reads elements ``[e0, e1)`` of rows ``[r0, r1)``: one ``pread`` when they are contiguous
    in the file, else one per row. Every block lands in one reused buffer (an anonymous
    mapping, handed back to the system when this object goes), so the returned tensor is
    valid until the next call. The view is checked against the tensor's byte range up front.
    """

    def __init__(self, info: TensorInfo, offset: int, pitch: int, rows: int, length: int) -> None:
        self.info, self.dtype = info, _checked_dtype(info)
        self.item = torch.empty((), dtype=self.dtype).element_size()
        numel = (info.end - info.begin) // self.item
        last = offset + (rows - 1) * pitch + length if rows and length else 0
        if min(offset, pitch, rows, length) < 0 or last > numel:
            raise ValueError(f"rows of {length} elements at {offset} + r * {pitch}, r < {rows}, "
                             f"lie outside the {numel} elements of {info.path}")
        self.offset, self.pitch, self.rows, self.length = offset, pitch, rows, length
        self._buf: mmap.mmap | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, length)``: the view's shape in elements."""
        return self.rows, self.length

    def _buffer(self, nbytes: int) -> memoryview:
        """The first ``nbytes`` of the reused buffer (grown, never shrunk)."""
        if self._buf is None or len(self._buf) < nbytes:
            self._buf = None  # let the old mapping go before the new one is made
            self._buf = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE)
        return memoryview(self._buf)[:nbytes]

    def __call__(self, r0: int, r1: int, e0: int, e1: int) -> torch.Tensor:
        """Elements ``[e0, e1)`` of rows ``[r0, r1)`` as an ``(r1 - r0, e1 - e0)`` tensor of the stored dtype."""
        if not (0 <= r0 <= r1 <= self.rows and 0 <= e0 <= e1 <= self.length):
            raise ValueError(f"block [{r0}:{r1}, {e0}:{e1}] out of range for rows of shape {self.shape}")
        h, w, item = r1 - r0, e1 - e0, self.item
        if h == 0 or w == 0:
            return torch.empty((h, w), dtype=self.dtype)
        view = self._buffer(h * w * item)
        start = self.info.begin + (self.offset + r0 * self.pitch + e0) * item
        fd = os.open(self.info.path, os.O_RDONLY)
        try:
            if w == self.pitch or h == 1:  # consecutive in the file: one read
                _pread_into(fd, view, start, self.info.path)
            else:
                step, size = self.pitch * item, w * item
                for i in range(h):
                    _pread_into(fd, view[i * size:(i + 1) * size], start + i * step, self.info.path)
        finally:
            os.close(fd)
        return torch.frombuffer(view, dtype=self.dtype).view(h, w)
