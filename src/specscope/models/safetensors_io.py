"""A small reader of the safetensors format that reads with ``pread``, never ``mmap``.

Memory-mapped reads leave every touched page of the file resident (and counted in RSS)
until the mapping goes, so analyzing a file larger than RAM would fill memory with file
pages. Reading explicit byte ranges keeps the resident set to what is being used: one
tensor, or one block of rows of it.

Format: 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``),
then the data; offsets are relative to the end of the header.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..errors import CheckpointError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
         "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int

    @property
    def row_bytes(self) -> int:
        return (self.end - self.begin) // self.shape[0] if self.shape and self.shape[0] else 0


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """Tensor infos and metadata; a truncated or corrupted file raises :class:`CheckpointError`."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"cannot read safetensors file {path}: shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"cannot read safetensors file {path}: header length {n} does not fit a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError(f"cannot read safetensors file {path}: header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot read safetensors file {path}: header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    start = 8 + n
    infos = {}
    for name, h in header.items():
        try:
            dtype, shape, (b, e) = h["dtype"], tuple(int(s) for s in h["shape"]), h["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"cannot read safetensors file {path}: bad entry for {name}") from None
        numel = 1
        for s in shape:
            numel *= s
        if dtype in SIZES and e - b != numel * SIZES[dtype]:
            raise CheckpointError(f"cannot read safetensors file {path}: {name} has {e - b} bytes for shape {shape}")
        if start + e > size:
            raise CheckpointError(f"cannot read safetensors file {path}: truncated ({name} ends past the end of the file)")
        infos[name] = TensorInfo(path, dtype, shape, start + b, start + e)
    return infos, meta


def read_rows(info: TensorInfo, r0: int, r1: int) -> torch.Tensor:
    """Rows ``[r0, r1)`` of a tensor (all of it for ``0, shape[0]``), read with ``pread``."""
    if info.dtype not in DTYPES:
        raise CheckpointError(f"cannot read dtype {info.dtype} of {info.path}")
    rb = info.row_bytes
    nbytes = (r1 - r0) * rb
    buf = bytearray(nbytes)
    fd = os.open(info.path, os.O_RDONLY)
    try:
        view = memoryview(buf)
        got = 0
        while got < nbytes:
            k = os.preadv(fd, [view[got:]], info.begin + r0 * rb + got)
            if k <= 0:
                raise CheckpointError(f"cannot read {info.path}: unexpected end of file")
            got += k
    finally:
        os.close(fd)
    if nbytes == 0:
        return torch.empty((r1 - r0, *info.shape[1:]), dtype=DTYPES[info.dtype])
    t = torch.frombuffer(buf, dtype=DTYPES[info.dtype])
    return t.reshape(r1 - r0, *info.shape[1:])


def row_blocks(info: TensorInfo, max_bytes: int = 8 * 2**20) -> Iterator[torch.Tensor]:
    """The tensor as consecutive blocks of rows of at most ``max_bytes`` each."""
    rows = max(1, max_bytes // max(1, info.row_bytes))
    for r0 in range(0, info.shape[0], rows):
        yield read_rows(info, r0, min(info.shape[0], r0 + rows))
