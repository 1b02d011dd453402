"""Safetensors headers are untrusted: every malformed header is one CheckpointError, before any read."""
from __future__ import annotations

import copy
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from specscope.errors import CheckpointError
from specscope.models.safetensors_io import BITS, DTYPES, MAX_HEADER, read_header, read_rows, row_blocks

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# A valid two-tensor header: a is F32 [2, 2] at [0, 16), b is F16 [4] at [16, 24).
VALID = {"__metadata__": {"format": "pt"},
         "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
         "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}


def write(path: Path, header: Any, data: bytes = bytes(24), length: int | None = None) -> Path:
    """A file with ``header`` (a JSON value, or raw bytes) and ``data``; ``length`` overrides the prefix."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def with_(**changes: Any) -> dict:
    """VALID with ``changes`` (``a__shape=[3]`` sets ``VALID["a"]["shape"]``; a top-level key replaces)."""
    h = copy.deepcopy(VALID)
    for key, value in changes.items():
        if key in h:
            h[key] = value
        else:
            name, _, field = key.partition("__")
            h[name][field] = value
    return h


def one_line_error(path: Path, match: str) -> str:
    """``read_header`` raises a one-line CheckpointError naming the file and ``match``."""
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"cannot read safetensors file {path}:"), msg
    assert match in msg, msg
    return msg


MALFORMED = [  # (id, header, data, length prefix, what the message must say)
    ("string offsets", with_(a__data_offsets=["0", "16"]), bytes(24), None, "tensor 'a': data_offsets"),
    ("list dtype", with_(a__dtype=["F32"]), bytes(24), None, "tensor 'a': unknown dtype ['F32']"),
    ("unknown dtype", with_(a__dtype="F128"), bytes(24), None, "unknown dtype 'F128'"),
    ("negative dim", with_(b__shape=[-4]), bytes(24), None, "tensor 'b': shape [-4] is not a list of non-negative"),
    ("bool dims", with_(a__shape=[True, True]), bytes(24), None, "shape [True, True]"),
    ("float dim", with_(a__shape=[2.0, 2]), bytes(24), None, "shape [2.0, 2]"),
    ("shape not a list", with_(a__shape=4), bytes(24), None, "shape 4 is not a list"),
    ("negative offset", with_(a__data_offsets=[-8, 8]), bytes(24), None, "data_offsets [-8, 8]"),
    ("bool offsets", with_(a__data_offsets=[False, 16]), bytes(24), None, "data_offsets [False, 16]"),
    ("three offsets", with_(a__data_offsets=[0, 8, 16]), bytes(24), None, "list of two"),
    ("begin > end", with_(a__data_offsets=[16, 0]), bytes(24), None, "begin 16 > end 0"),
    ("offsets past the file", with_(b__data_offsets=[16, 40]), bytes(24), None, "past the 24-byte data section"),
    ("overlapping tensors", with_(b__data_offsets=[8, 16]), bytes(24), None, "tensor 'b' [8, 16) overlaps tensor 'a'"),
    ("hole", with_(b__data_offsets=[20, 28]), bytes(28), None, "hole [16, 20)"),
    ("trailing bytes", VALID, bytes(32), None, "8 bytes after the last tensor"),
    ("wrong byte count", with_(a__shape=[2, 3]), bytes(24), None, "span 16 bytes, but dtype F32 and shape [2, 3] need 24"),
    ("more than the data", with_(a__shape=[10**12, 10**12]), bytes(24), None, "need more than the 24-byte data"),
    ("sub-byte remainder", with_(b__dtype="F4", b__shape=[3], b__data_offsets=[16, 18]), bytes(18), None,
     "not a whole number of bytes"),
    ("data but no tensors", {}, bytes(8), None, "8-byte data section but no tensors"),
    ("non-dict entry", with_(a=[0, 16]), bytes(24), None, "tensor 'a': entry is a list, not an object"),
    ("missing key", with_(a={"dtype": "F32", "shape": [2, 2]}), bytes(24), None, "missing ['data_offsets']"),
    ("extra key", with_(a__extra=1), bytes(24), None, "unexpected ['extra']"),
    ("non-dict metadata", with_(__metadata__=["x"]), bytes(24), None, "__metadata__ is a list"),
    ("non-str metadata", with_(__metadata__={"k": 1}), bytes(24), None, "__metadata__ entry 'k' is 1"),
    ("header length 0", b"", bytes(24), 0, "header length is 0"),
    ("header length huge", b"{}", b"", 2**63, f"exceeds the {MAX_HEADER}-byte limit"),
    ("header length past the file", b"{}", b"", 100, "header length 100 does not fit a 10-byte file"),
    ("invalid UTF-8", b'{"\xff": 1}', b"", None, "not valid UTF-8"),
    ("JSON array", b"[]", b"", None, "header is a JSON list, not an object"),
    ("not JSON", b'{"a": ', b"", None, "not valid JSON"),
    ("NaN", b'{"__metadata__": {"k": NaN}}', b"", None, "not valid JSON"),
    ("duplicate tensor", b'{"a": {}, "a": {}}', b"", None, "duplicate key 'a'"),
    ("nested too deeply", b"[" * 200_000, b"", None, "not valid JSON"),
    ("newline in name", {"x\ny": {"dtype": "F32", "shape": [], "data_offsets": [0, 3]}}, bytes(3), None,
     "tensor 'x\\ny'"),
]


@pytest.mark.parametrize("header,data,length,match", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_header_is_one_checkpoint_error(tmp_path, header, data, length, match):
    one_line_error(write(tmp_path / "bad.safetensors", header, data, length), match)


def test_short_file(tmp_path):
    (tmp_path / "s.safetensors").write_bytes(b"\x01\x00")
    one_line_error(tmp_path / "s.safetensors", "shorter than its 8-byte header length")


def test_valid_header_and_read_rows_stays_in_its_tensor(tmp_path):
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes() + torch.ones(4, dtype=torch.float16).numpy().tobytes()
    infos, meta = read_header(write(tmp_path / "ok.safetensors", VALID, data))
    assert meta == {"format": "pt"} and set(infos) == {"a", "b"}
    assert torch.equal(read_rows(infos["a"], 0, 2), torch.arange(4, dtype=torch.float32).reshape(2, 2))
    assert torch.equal(read_rows(infos["b"], 1, 3), torch.ones(2, dtype=torch.float16))
    for r0, r1 in [(-1, 1), (0, 3), (2, 1)]:
        with pytest.raises(ValueError, match="out of range"):
            read_rows(infos["a"], r0, r1)


def test_null_metadata_and_empty_file_as_the_reference_reader(tmp_path):
    """``"__metadata__": null`` and a header with no tensors (and no data) are valid, as in safetensors."""
    for header in ({}, {"__metadata__": None}):
        path = write(tmp_path / "e.safetensors", header, b"")
        assert read_header(path) == ({}, {})
        with safe_open(str(path), "pt") as f:
            assert list(f.keys()) == []


FLOATS = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
F8 = [d for d in (getattr(torch, n, None) for n in ("float8_e4m3fn", "float8_e5m2")) if d is not None]


def test_official_files_round_trip(tmp_path):
    """Files written by ``safetensors.torch.save_file`` pass validation and read back equal."""
    g = torch.Generator().manual_seed(0)
    tensors = {f"{d}.{i}".replace("torch.", ""): torch.randn(shape, generator=g).to(d)
               for d in FLOATS for i, shape in enumerate([(5, 3), (7,), (2, 3, 4), (0, 3), ()])}
    tensors.update({f"f8.{d}": torch.randn(4, 4, generator=g).to(d) for d in F8})
    tensors["i8"] = torch.randint(-5, 5, (8, 8), dtype=torch.int8, generator=g)
    path = tmp_path / "official.safetensors"
    save_file(tensors, str(path), metadata={"config": "{}"})
    infos, meta = read_header(path)
    assert meta == {"config": "{}"} and set(infos) == set(tensors)
    with safe_open(str(path), "pt") as f:
        for name, t in tensors.items():
            info = infos[name]
            assert info.shape == tuple(t.shape) and info.end - info.begin == t.numel() * t.element_size()
            if info.dtype not in DTYPES:
                with pytest.raises(CheckpointError, match="cannot read dtype"):
                    read_rows(info, 0, 1)
            elif t.dim():
                assert torch.equal(read_rows(info, 0, t.shape[0]), t)
                assert torch.equal(torch.cat(list(row_blocks(info, max_bytes=16)) or [t[:0]]), t)
            assert torch.equal(f.get_tensor(name), t)


# --- property-based fuzzing --------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=8) | st.sampled_from(sorted(BITS)),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                    max_leaves=12)


@st.composite
def valid_files(draw) -> tuple[dict, bytes]:
    """A random valid header (any dtype, tensors in random order) and its data."""
    n = draw(st.integers(0, 5))
    entries = []
    for i in range(n):
        dtype = draw(st.sampled_from(sorted(BITS)))
        shape = draw(st.lists(st.integers(1, 4), max_size=3))  # 0 dims: test_official_files_round_trip
        numel = 1
        for s in shape:
            numel *= s
        if numel * BITS[dtype] % 8:
            k = 8 // math.gcd(numel * BITS[dtype], 8)  # sub-byte dtypes: a whole number of bytes
            shape, numel = shape + [k], numel * k
        entries.append((f"t{i}", dtype, shape, numel * BITS[dtype] // 8))
    order = draw(st.permutations(range(n)))
    header: dict[str, Any] = {"__metadata__": draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))}
    pos = 0
    for k in order:
        name, dtype, shape, nbytes = entries[k]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    return header, draw(st.binary(min_size=pos, max_size=pos))


def mutate(draw, value: Any) -> Any:
    """``value`` with one random node replaced, deleted or added (mostly deep: dims, offsets, dtypes)."""
    if isinstance(value, (dict, list)) and value:
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = draw(st.sampled_from(keys))
        out = copy.copy(value)
        action = draw(st.sampled_from(["descend"] * 4 + ["delete", "add", "replace"]))
        if action == "descend":
            out[key] = mutate(draw, value[key])
        elif action == "delete":
            del out[key]
        elif action == "replace":
            return draw(JSON)
        elif isinstance(out, dict):
            out[draw(st.text(max_size=6))] = draw(JSON)
        else:
            out.append(draw(JSON))
        return out
    return draw(JSON | st.integers(-3, 40) | st.booleans())


def check_accepted(path: Path) -> None:
    """``read_header`` either refuses with CheckpointError or accepts a file that reads cleanly."""
    try:
        infos, meta = read_header(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    size = path.stat().st_size
    assert all(isinstance(v, str) for v in meta.values())
    with safe_open(str(path), "pt") as f:  # what we accept, the reference reader accepts
        assert set(f.keys()) == set(infos)
        for name, info in infos.items():
            assert 0 < info.begin <= info.end <= size
            if info.dtype in DTYPES and info.shape:
                got = torch.cat([read_rows(info, 0, info.shape[0])] + list(row_blocks(info, max_bytes=4)))
                want = f.get_tensor(name)
                assert got.view(torch.uint8).tolist() == torch.cat([want, want]).view(torch.uint8).tolist()


@FUZZ
@given(valid_files())
def test_valid_headers_pass_and_read_back(tmp_path, file):
    header, data = file
    path = write(tmp_path / "v.safetensors", header, data)
    infos, _ = read_header(path)
    assert set(infos) == set(header) - {"__metadata__"}
    check_accepted(path)


@FUZZ
@given(st.data())
def test_mutated_headers_raise_only_checkpoint_error(tmp_path, data):
    header, body = data.draw(valid_files())
    names = [k for k in header if k != "__metadata__"]
    if names and data.draw(st.booleans()):  # one field of one tensor, or one number in it
        entry = header[data.draw(st.sampled_from(names))]
        field = data.draw(st.sampled_from(sorted(entry)))
        entry[field] = mutate(data.draw, entry[field])
    else:
        header = mutate(data.draw, header)
    raw = json.dumps(header).encode()
    if data.draw(st.integers(0, 3)) == 0:  # byte-level damage too: flip, cut, or pad
        i = data.draw(st.integers(0, len(raw)))
        raw = raw[:i] + data.draw(st.binary(max_size=3)) + raw[i + data.draw(st.integers(0, 2)):]
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))] + data.draw(st.binary(max_size=4))
    check_accepted(write(tmp_path / "m.safetensors", raw, body))


@FUZZ
@given(st.binary(max_size=64), st.booleans())
def test_random_bytes_raise_only_checkpoint_error(tmp_path, blob, prefixed):
    path = tmp_path / "r.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob if prefixed else blob)
    check_accepted(path)
