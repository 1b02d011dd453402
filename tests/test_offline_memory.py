"""Offline spectra read block by block from safetensors files: known answers and bounded memory.

References: ``np.linalg.svd`` of the float64 matrix (the stored values upcast), and, for the
file layouts, the catalog's own ``read()`` of each matrix. Memory is checked by what the code
allocates and reads (block and Gram sizes), never by timing or RSS (benchmarks/memory.py).
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import specscope as ss
from specscope.models.loading import open_checkpoint
from specscope.spectra import compute
from specscope.spectra.compute import singular_values_lowmem, singular_values_streamed


def svd_desc(x: np.ndarray) -> np.ndarray:
    """Pooled descending singular values of a matrix or a stack (k, m, n), from LAPACK's SVD."""
    sv = np.linalg.svd(x, compute_uv=False)
    return -np.sort(-sv.reshape(-1))


def planted(m: int, n: int, seed: int = 0) -> torch.Tensor:
    """An m x n float64 matrix whose columns are scaled from 1 down to 1e-3 (a spread of singular values)."""
    g = np.random.default_rng(seed)
    return torch.tensor(g.standard_normal((m, n)) * np.geomspace(1.0, 1e-3, n))


def stream_of(path, name):
    """The stream and the cataloged matrix ``name`` of a one-file checkpoint."""
    ck = open_checkpoint(path)
    ref = next(r for r in ck.catalog() if r.name == name)
    return ck, ref, ck.stream(ref)


SHAPES = {"tall": (700, 60), "square": (300, 300), "wide": (50, 600)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_streamed_from_file_equals_svd(tmp_path, kind, dtype):
    m, n = SHAPES[kind]
    w = planted(m, n).to(dtype)
    save_file({"layers.0.mlp.fc.weight": w}, str(tmp_path / "w.safetensors"))
    _, ref, stream = stream_of(tmp_path / "w.safetensors", "layers.0.mlp.fc")
    assert stream is not None and stream.shape == (m, n) and not stream.transposed
    exact = svd_desc(w.to(torch.float64).numpy())
    for block in (compute.BLOCK_ELEMS, 1):  # one block, and the smallest blocks (128 rows / columns)
        spec = singular_values_streamed(stream.read, stream.shape, stream.slices, block_elems=block)
        assert spec.status == "ok"
        np.testing.assert_allclose(spec.sv[:10], exact[:10], rtol=1e-8)
        np.testing.assert_allclose(spec.sv, exact, rtol=0, atol=1e-8 * exact[0])
    row = ss.analyze(tmp_path / "w.safetensors", progress=False).iloc[0]
    assert row["status"] == "ok" and (row["d_out"], row["d_in"]) == (m, n)
    assert row["spectral_norm"] == pytest.approx(exact[0], rel=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("c_out, c_in, kernel", [(300, 40, (3,)), (40, 200, (2, 2)), (150, 150, (4,))])
def test_pooled_convolution_streamed_equals_svd_of_each_kernel_position(tmp_path, c_out, c_in, kernel, dtype):
    k = int(np.prod(kernel))
    w = torch.randn(c_out, c_in, *kernel, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    save_file({"features.conv.weight": w}, str(tmp_path / "c.safetensors"))
    _, ref, stream = stream_of(tmp_path / "c.safetensors", "features.conv")
    assert ref.slices == k and stream is not None and stream.slices == k
    stack = w.to(torch.float64).reshape(c_out, c_in, k).permute(2, 0, 1).numpy()  # one matrix per kernel position
    exact = svd_desc(stack)
    spec = singular_values_streamed(stream.read, stream.shape, stream.slices, block_elems=1)
    assert spec.status == "ok" and len(spec.sv) == k * min(c_out, c_in)
    np.testing.assert_allclose(spec.sv[:10], exact[:10], rtol=1e-8)
    np.testing.assert_allclose(spec.sv, exact, rtol=0, atol=1e-8 * exact[0])
    lowmem = singular_values_lowmem(torch.tensor(stack))  # the same engine on an in-memory stack
    np.testing.assert_allclose(lowmem.sv, exact, rtol=0, atol=1e-8 * exact[0])


def _layouts_dir(tmp_path):
    """An HF-style directory with every stored layout the catalog splits: GPT-2 Conv1D (transposed, fused
    c_attn), packed experts (fused gate_up, transposed), a convolution, LSTM gates, a NeoX fused qkv (not a view)."""
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    tensors = {
        "h.0.attn.c_attn.weight": r(16, 48), "h.0.attn.c_proj.weight": r(16, 16), "h.0.mlp.c_fc.weight": r(16, 64),
        "layers.1.mlp.experts.gate_up_proj": r(3, 16, 40), "layers.1.mlp.experts.down_proj": r(3, 20, 16),
        "layers.1.conv.weight": r(12, 8, 3, 3), "rnn.weight_hh_l0": r(4 * 10, 10),
        "gpt_neox.layers.2.attention.query_key_value.weight": r(48, 16),
        "layers.1.mlp.fc.weight": r(70, 16),
    }
    d = tmp_path / "hf"
    d.mkdir()
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_head": 4, "n_embd": 16}))
    return d


def test_every_stream_reads_exactly_the_cataloged_matrix(tmp_path):
    ck = open_checkpoint(_layouts_dir(tmp_path))
    streamed = whole = 0
    for ref in ck.catalog():
        want = ref.read()
        stream = ck.stream(ref)
        if stream is None:
            whole += 1
            continue
        streamed += 1
        m, n = stream.shape
        rows = torch.cat([stream[r0:r0 + 7].clone() for r0 in range(0, m, 7)])  # reads of 7 rows
        got = rows.reshape(m, n, stream.slices).permute(2, 0, 1)
        if stream.transposed:
            got = got.transpose(1, 2)
        assert torch.equal(got if ref.slices > 1 else got[0], want), ref.name
        block = stream.read(1, m, 2, n)  # an inner block, read row by row or at once
        assert torch.equal(block, rows.reshape(m, n, stream.slices)[1:, 2:]), ref.name
    assert streamed == len(ck.catalog()) - 3 and whole == 3  # NeoX q / k / v are copies, read whole
    df = ss.analyze(ck.path, progress=False).set_index("name")
    for ref in ck.catalog():  # analyze: the same values as the matrices read whole
        x = ref.read().to(torch.float64).numpy()
        np.testing.assert_allclose(df.loc[ref.name, "spectral_norm"], svd_desc(x)[0], rtol=1e-10)


def test_streamed_path_never_holds_the_whole_float64_matrix(tmp_path, monkeypatch):
    """Every float64 array the streamed path makes is a Gram (r x r) or one block, and every read is one block."""
    m, n = 600, 400
    w = planted(m, n).float()
    save_file({"layers.0.mlp.fc.weight": w}, str(tmp_path / "w.safetensors"))
    _, _, stream = stream_of(tmp_path / "w.safetensors", "layers.0.mlp.fc")
    made, reads = [], []
    real_scratch = compute._scratch
    monkeypatch.setattr(compute, "_scratch", lambda shape, order="C": made.append(shape) or real_scratch(shape, order))

    def read(r0, r1, c0, c1):
        reads.append((r1 - r0) * (c1 - c0))
        return stream.read(r0, r1, c0, c1)

    block = 2**15
    spec = singular_values_streamed(read, stream.shape, block_elems=block)
    assert spec.status == "ok"
    grams = [s for s in made if s == (n, n)]
    buffers = [s for s in made if s != (n, n)]
    assert len(grams) == 1 and len(buffers) == 1 and np.prod(buffers[0]) <= max(block, 128 * n) < m * n
    assert max(reads) <= max(block, 128 * n) and sum(reads[1:]) == m * n  # (reads[0]: the dtype probe)
    exact = svd_desc(w.double().numpy())
    np.testing.assert_allclose(spec.sv[:10], exact[:10], rtol=1e-8)


def test_half_precision_stack_takes_its_grams_in_passes(tmp_path):
    """A float16 stack of square slices: its Grams (4x its bytes) are built half at a time, two passes."""
    w = torch.randn(150, 150, 4, generator=torch.Generator().manual_seed(3)).half()
    save_file({"features.conv.weight": w}, str(tmp_path / "c.safetensors"))
    _, _, stream = stream_of(tmp_path / "c.safetensors", "features.conv")
    starts = []

    def read(r0, r1, c0, c1):
        if (r0, c0) == (0, 0) and r1 > 1:
            starts.append(r1)
        return stream.read(r0, r1, c0, c1)

    spec = singular_values_streamed(read, stream.shape, stream.slices)
    assert len(starts) == 2  # two passes over the file
    exact = svd_desc(w.double().permute(2, 0, 1).numpy())
    np.testing.assert_allclose(spec.sv, exact, rtol=0, atol=1e-8 * exact[0])


def test_series_streams_cos_w_final_and_spectra_without_reading_whole(tmp_path, monkeypatch):
    d = tmp_path / "ckpts"
    d.mkdir()
    g = torch.Generator().manual_seed(4)
    ws = [torch.randn(300, 200, generator=g) for _ in range(3)]
    for i, w in enumerate(ws):
        save_file({"layers.0.mlp.fc.weight": w, "layers.0.mlp.proj.weight": w[:100].T.contiguous()},
                  str(d / f"step_{10 * i:04d}.safetensors"))
    from specscope.models import loading

    monkeypatch.setattr(loading.Checkpoint, "load", lambda self, name: pytest.fail(f"{name} read whole"))
    df = ss.analyze(d, progress=False).sort_values(["name", "step"])
    fc = df[df["name"] == "layers.0.mlp.fc"]
    for w, (_, row) in zip(ws, fc.iterrows()):
        x, f = w.double(), ws[-1].double()
        assert row["cos_w_final"] == pytest.approx(float((x * f).sum() / (x.norm() * f.norm())), rel=1e-12)
        assert row["spectral_norm"] == pytest.approx(svd_desc(x.numpy())[0], rel=1e-8)
    proj = df[df["name"] == "layers.0.mlp.proj"]
    assert proj["cos_w_final"].iloc[-1] == pytest.approx(1.0) and (proj["status"] == "ok").all()


def test_strided_rows_stay_inside_their_tensor(tmp_path):
    from specscope.models.safetensors_io import StridedRows, read_header

    a = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    save_file({"a": a, "b": torch.ones(3, dtype=torch.float16)}, str(tmp_path / "t.safetensors"))
    info = read_header(tmp_path / "t.safetensors")[0]["a"]
    every_other = StridedRows(info, 1, 12, 2, 5)  # rows 0 and 2 of a, elements 1..5
    assert torch.equal(every_other(0, 2, 0, 5), a[::2, 1:])
    assert torch.equal(every_other(1, 2, 2, 4), a[2:3, 3:5])
    with pytest.raises(ValueError, match="outside"):
        StridedRows(info, 1, 12, 2, 12)  # the last row would run 1 element past the tensor
    with pytest.raises(ValueError, match="out of range"):
        every_other(0, 3, 0, 5)
