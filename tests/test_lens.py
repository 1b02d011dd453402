"""Spectral Lens measurements: streaming covariance and per-sample gradient spectra against references."""
import numpy as np
import pytest
import torch

import specscope as ss
from specscope.streams import StreamingCovariance
from specscope.train import GPT, GPTConfig


def test_covariance_equals_numpy_cov_and_merges(rng):
    x = rng.standard_normal((1000, 24)) @ rng.standard_normal((24, 24))
    full = StreamingCovariance(24)
    for chunk in np.array_split(x, 7):
        full.update(torch.from_numpy(chunk))
    ref = np.cov(x, rowvar=False)
    np.testing.assert_allclose(full.compute().numpy(), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    a, b = StreamingCovariance(24), StreamingCovariance(24)
    a.update(torch.from_numpy(x[:300]))
    b.update(torch.from_numpy(x[300:]))
    np.testing.assert_allclose(a.merge(b).compute().numpy(), full.compute().numpy(), rtol=1e-12, atol=1e-13)


def test_covariance_with_large_common_offset(rng):
    x = 1e4 + rng.standard_normal((5000, 8))
    cov = StreamingCovariance(8)
    for chunk in np.array_split(x, 13):
        cov.update(torch.from_numpy(chunk))
    ref = np.cov(x - x.mean(axis=0), rowvar=False)  # the exact answer, computed centered
    np.testing.assert_allclose(cov.compute().numpy(), ref, rtol=1e-10, atol=1e-12)


def test_activation_spectrum_equals_materialized_covariance():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32))
    seqs = torch.randint(0, 64, (20, 16))
    eig = ss.measure.activation_spectrum(model, seqs, layer=-1, batch=6)
    with torch.no_grad():
        h = model.hidden_states(seqs)[-1].double()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    ref = np.sort(np.linalg.eigvalsh(np.cov(h.reshape(-1, 32).numpy(), rowvar=False)))[::-1]
    np.testing.assert_allclose(eig, np.clip(ref, 0, None), rtol=1e-9, atol=1e-12)


def _check_gradients(model, seqs, matrix, rtol):
    fast = ss.measure.gradient_spectrum(model, seqs, matrix=matrix, layer=-1, batch=5, chunk=3)
    ref = ss.measure.gradient_spectrum_reference(model, seqs, matrix=matrix, layer=-1)
    keep = ref > 1e-8 * ref[0]
    np.testing.assert_allclose(fast[: len(ref)][keep], ref[keep], rtol=rtol)
    return np.max(np.abs(fast[: len(ref)][keep] - ref[keep]) / ref[keep])


@pytest.mark.parametrize("matrix", ["o", "q", "mlp_out"])
def test_gradient_spectrum_equals_loop_reference_gpt(matrix):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32)).double()
    _check_gradients(model, torch.randint(0, 64, (12, 16)), matrix, 1e-6)


@pytest.mark.parametrize("matrix", ["o", "q", "v"])
def test_gradient_spectrum_equals_loop_hf_gpt2(matrix):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).double()
    _check_gradients(model, torch.randint(0, 50, (12, 16)), matrix, 1e-6)  # q, v: column slices of the fused Conv1D c_attn


def test_gradient_spectrum_float32_agreement_is_reported():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32))
    worst = _check_gradients(model, torch.randint(0, 64, (12, 16)), "o", 1e-3)
    print(f"float32 model: largest relative difference to the loop reference {worst:.2e}")


def test_measurement_leaves_grads_and_modes_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=1, n_head=2, d_model=16, dropout=0.1))
    model.train()
    ss.measure.gradient_spectrum(model, torch.randint(0, 64, (4, 16)))
    assert model.training and all(p.grad is None for p in model.parameters())


def test_lens_probes_in_the_monitor(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32))
    pool = ss.probes.make_pool(np.arange(5000) % 64, n=12, seq_len=16, seed=3)
    assert torch.equal(pool, ss.probes.make_pool(np.arange(5000) % 64, n=12, seq_len=16, seed=3))  # fixed, seeded
    probes = [ss.probes.Activations(pool, every=2), ss.probes.Gradients(pool, matrix="v", samples=8, every=2)]
    with ss.Monitor(model, tmp_path / "r", probes=probes) as mon:
        for step in range(3):
            mon.step(step, loss=1.0)
    run = ss.open_run(tmp_path / "r")
    spec = run.spectra()
    act = spec[(spec["probe"] == "activations") & (spec["step"] == 2)].iloc[0]
    np.testing.assert_allclose(act["values"], ss.measure.activation_spectrum(model, pool), rtol=1e-10, atol=1e-14)
    grad = spec[(spec["probe"] == "gradients") & (spec["step"] == 2)].iloc[0]
    assert grad["kind"] == "v" and grad["layer"] == 1 and len(grad["values"]) == 8
    np.testing.assert_allclose(grad["values"], ss.measure.gradient_spectrum(model, pool[:8], matrix="v"), rtol=1e-8)
    m = run.metrics()
    for probe in ("activations", "gradients"):
        got = set(m[m["probe"] == probe]["metric"])
        assert {"rankme", "alpha_head", "alpha_tail", "alpha_tail_auto", "head_tail_knee"} <= got


@pytest.mark.parametrize("family", ["GPTNeoX", "Llama"])
def test_one_shot_measurements_on_neox_and_llama(family):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=50, intermediate_size=48,
              max_position_embeddings=16)
    model = getattr(transformers, f"{family}ForCausalLM")(getattr(transformers, f"{family}Config")(**kw)).double()
    seqs = torch.randint(0, 50, (10, 16))
    _check_gradients(model, seqs, "q", 1e-6)  # NeoX: q interleaved inside query_key_value
    _check_gradients(model, seqs, "o", 1e-6)
    eig = ss.measure.activation_spectrum(model, seqs)
    blocks = model.gpt_neox.layers if family == "GPTNeoX" else model.model.layers
    seen = []  # brute force: the last block's output, RMS-normalized per token, its covariance's eigenvalues
    hook = blocks[-1].register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model.eval()(seqs)
    hook.remove()
    h = seen[0].reshape(-1, 32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    ref = np.sort(np.linalg.eigvalsh(np.cov(h.numpy(), rowvar=False)))[::-1]
    assert len(eig) == 32
    np.testing.assert_allclose(eig, np.clip(ref, 0, None), rtol=1e-9, atol=1e-12 * ref[0])
