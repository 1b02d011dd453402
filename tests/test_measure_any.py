"""Activations and per-sample gradients on models that are not token language models: CNN, LSTM, ViT,
nn.TransformerEncoder; float pools, (x, y) pools, user forward / loss functions, the probes in the monitor."""
import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import specscope as ss
from specscope.measure import gradient_spectrum, gradient_spectrum_reference


def xy_forward(model, batch):
    return model(batch[0])


def ce_loss(out, batch):
    return F.cross_entropy(out, batch[1], reduction="none")


def mse_loss(out, batch):
    return (out - batch[1]).pow(2).reshape(len(batch[1]), -1).mean(1)


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))


def image_pool(n: int = 12, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


class LSTMRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1]).squeeze(-1)


class EncoderRegressor(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1)).squeeze(-1)


def assert_spectra_equal(fast: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    keep = ref > 1e-8 * ref[0]
    np.testing.assert_allclose(fast[: len(ref)][keep], ref[keep], rtol=rtol)


def brute_eigs(h: torch.Tensor) -> np.ndarray:
    lam = np.linalg.eigvalsh(np.cov(h.double().numpy(), rowvar=False))[::-1]
    return np.clip(lam, 0, None)


# (a) a small CNN on float images


def test_cnn_activations_of_a_conv_feature_map_equal_brute_force():
    torch.manual_seed(0)
    model = small_cnn().double()
    x, y = image_pool()
    got = ss.measure.activation_spectrum(model, (x, y), module="2", normalize="none", batch=5, forward_fn=xy_forward)
    with torch.no_grad():
        fmap = model[:3](x)  # (B, C, H, W) output of conv "2"
    rows = fmap.permute(0, 2, 3, 1).reshape(-1, 8)  # every spatial position a row, channels the features
    np.testing.assert_allclose(got, brute_eigs(rows), rtol=1e-9, atol=1e-12)
    rms = ss.measure.activation_spectrum(model, (x, y), module="2", batch=5, forward_fn=xy_forward)
    np.testing.assert_allclose(rms, brute_eigs(rows * torch.rsqrt(rows.pow(2).mean(-1, keepdim=True) + 1e-6)),
                               rtol=1e-9, atol=1e-12)


def test_cnn_default_activation_site_is_the_head_input(caplog):
    torch.manual_seed(0)
    model = small_cnn().double()
    x, y = image_pool()
    with caplog.at_level(logging.INFO, logger="specscope.measure.activations"):
        covs = ss.measure.activation_covariances(model, (x, y), forward_fn=xy_forward)
    (site,) = covs
    assert site.name == "6:input" and "'6'" in caplog.text
    with torch.no_grad():
        feats = model[:6](x)
    h = feats * torch.rsqrt(feats.pow(2).mean(-1, keepdim=True) + 1e-6)
    np.testing.assert_allclose(ss.measure.desc_eigvalsh(covs[site].compute()), brute_eigs(h), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["auto", "func", "loop"])
@pytest.mark.parametrize("layer", [0, 1])
def test_cnn_conv_gradient_spectrum_equals_loop_reference(layer, method):
    torch.manual_seed(0)
    model = small_cnn().double()
    pool = image_pool()
    kw = dict(forward_fn=xy_forward, loss_fn=ce_loss)
    fast = gradient_spectrum(model, pool, "conv", layer, batch=5, chunk=3, method=method, **kw)
    ref = gradient_spectrum_reference(model, pool, "conv", layer, **kw)
    assert len(ref) == 12
    assert_spectra_equal(fast, ref, 1e-6)


@pytest.mark.parametrize("method", ["hooks", "func"])
def test_cnn_linear_gradient_spectrum_equals_loop_reference(method):
    torch.manual_seed(0)
    model = small_cnn().double()
    pool = image_pool()
    kw = dict(forward_fn=xy_forward, loss_fn=ce_loss)
    assert ss.measure.find_matrix(model, name="6").hookable
    fast = gradient_spectrum(model, pool, name="6", batch=5, chunk=3, method=method, **kw)
    assert_spectra_equal(fast, gradient_spectrum_reference(model, pool, name="6", **kw), 1e-6)


def test_cnn_float32_gradients_agree_with_the_reference():
    torch.manual_seed(0)
    model = small_cnn()
    pool = image_pool(dtype=torch.float32)
    kw = dict(forward_fn=xy_forward, loss_fn=ce_loss)
    for matrix, layer in (("conv", -1), ("other", -1)):
        fast = gradient_spectrum(model, pool, matrix, layer, batch=5, **kw)
        assert_spectra_equal(fast, gradient_spectrum_reference(model, pool, matrix, layer, **kw), 1e-4)


# (b) an LSTM regression model


@pytest.mark.parametrize("part", [0, 2])
def test_lstm_rnn_hh_gate_gradient_spectrum_equals_loop_reference(part):
    torch.manual_seed(0)
    model = LSTMRegressor().double()
    g = torch.Generator().manual_seed(2)
    pool = (torch.randn(10, 6, 4, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64))
    kw = dict(forward_fn=xy_forward, loss_fn=mse_loss, part=part)
    ref_entry = ss.measure.find_matrix(model, "rnn_hh", -1, part=part)
    assert ref_entry.part == part and ref_entry.shape == (8, 8)
    fast = gradient_spectrum(model, pool, "rnn_hh", -1, batch=4, chunk=3, **kw)  # torch.func or its loop fallback
    ref = gradient_spectrum_reference(model, pool, "rnn_hh", -1, **kw)
    assert_spectra_equal(fast, ref, 1e-6)
    assert_spectra_equal(gradient_spectrum(model, pool, "rnn_hh", -1, method="loop", **kw), ref, 1e-6)
    (site,) = ss.measure.activation_covariances(model, pool, forward_fn=xy_forward)
    assert site.name == "head:input"  # no block list: the representation the regression head reads


# (c) a ViT-style HF model on float pixels


def test_vit_activations_on_a_block_output_see_float_pixels():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 image_size=16, patch_size=4, num_labels=3)
    model = transformers.ViTForImageClassification(cfg)
    pixels = torch.randn(10, 3, 16, 16)
    seen = []
    h = model.register_forward_pre_hook(lambda _m, a, k: seen.append((a[0] if a else k["pixel_values"]).dtype),
                                        with_kwargs=True)
    eig = ss.measure.activation_spectrum(model, pixels, layer=-1, normalize="none", batch=4)
    h.remove()
    assert seen and set(seen) == {torch.float32}
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states[-1]  # the last block's output
    np.testing.assert_allclose(eig, brute_eigs(hidden.reshape(-1, 32)), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="out of range"):
        ss.measure.activation_spectrum(model, pixels, layer=2)


# (d) nn.TransformerEncoder with a fused in_proj_weight


def test_transformer_encoder_in_proj_q_gradient_spectrum_equals_loop_reference():
    torch.manual_seed(0)
    model = EncoderRegressor().double()
    g = torch.Generator().manual_seed(3)
    pool = (torch.randn(10, 5, 16, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64))
    kw = dict(forward_fn=xy_forward, loss_fn=mse_loss)
    q = ss.measure.find_matrix(model, "q", -1)
    assert q.param.endswith("in_proj_weight") and not q.hookable and q.shape == (16, 16)
    with pytest.raises(ValueError, match="hooked path does not apply"):
        gradient_spectrum(model, pool, "q", -1, method="hooks", **kw)
    ref = gradient_spectrum_reference(model, pool, "q", -1, **kw)
    assert_spectra_equal(gradient_spectrum(model, pool, "q", -1, batch=4, chunk=3, **kw), ref, 1e-6)
    # out_proj is an nn.Linear the attention never calls as a module: found out, measured through torch.func
    assert_spectra_equal(gradient_spectrum(model, pool, "o", 0, **kw),
                         gradient_spectrum_reference(model, pool, "o", 0, **kw), 1e-6)


# packed experts, dict pools


class PackedExperts(nn.Module):
    """One ``n_experts x d_out x d_in`` parameter per role, as transformers 5 stores MoE experts (dense mixture)."""

    def __init__(self, e: int = 3, d: int = 6, f: int = 5):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * f, d) * 0.3)
        self.down_proj = nn.Parameter(torch.randn(e, d, f) * 0.3)

    def forward(self, x, weights):
        g, u = torch.einsum("btd,efd->btef", x, self.gate_up_proj).chunk(2, dim=-1)
        y = torch.einsum("btef,edf->bted", F.silu(g) * u, self.down_proj)
        return (y * weights[..., None]).sum(2)


class MoEBlock(nn.Module):
    def __init__(self, d: int = 6):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.gate, self.mlp.experts = nn.Linear(d, 3, bias=False), PackedExperts(d=d)

    def forward(self, x):
        return x + self.mlp.experts(x, self.mlp.gate(x).softmax(-1))


class MoENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([MoEBlock(), MoEBlock()])
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.head(x).mean((1, 2))


@pytest.mark.parametrize("matrix,part", [("mlp_gate", 1), ("mlp_in", 2), ("mlp_out", 0), ("router", None)])
def test_packed_expert_gradient_spectra_equal_loop_reference(matrix, part):
    torch.manual_seed(0)
    model = MoENet().double()
    g = torch.Generator().manual_seed(7)
    pool = (torch.randn(8, 4, 6, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64))
    kw = dict(forward_fn=xy_forward, loss_fn=mse_loss, part=part)
    ref_entry = ss.measure.find_matrix(model, matrix, -1, part=part)
    assert ref_entry.part == (-1 if part is None else part) and ref_entry.hookable == (matrix == "router")
    assert_spectra_equal(gradient_spectrum(model, pool, matrix, -1, batch=3, **kw),
                         gradient_spectrum_reference(model, pool, matrix, -1, **kw), 1e-6)


def test_hf_gpt2_on_a_dict_pool_of_int32_ids_equals_the_reference():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).double()
    pool = {"input_ids": torch.randint(0, 50, (8, 16), dtype=torch.int32)}  # called as model(**batch)

    def loss(out, batch):
        return ss.measure.next_token_losses(out, batch["input_ids"])

    for matrix in ("k", "mlp_in"):
        assert_spectra_equal(gradient_spectrum(model, pool, matrix, -1, batch=3, loss_fn=loss),
                             gradient_spectrum_reference(model, pool, matrix, -1, loss_fn=loss), 1e-6)
    assert_spectra_equal(gradient_spectrum(model, pool["input_ids"], "v", 0),  # token tensor: the default loss
                         gradient_spectrum_reference(model, pool["input_ids"], "v", 0), 1e-6)


# the general paths, their fallbacks and the house rules


def test_a_linear_called_twice_per_forward_equals_the_reference():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.shared, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.shared(torch.tanh(self.shared(self.inp(x))))))

    torch.manual_seed(0)
    model = Twice().double()
    g = torch.Generator().manual_seed(4)
    pool = (torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randint(0, 2, (9,), generator=g))
    kw = dict(forward_fn=xy_forward, loss_fn=ce_loss, name="shared")
    assert_spectra_equal(gradient_spectrum(model, pool, method="hooks", batch=4, **kw),
                         gradient_spectrum_reference(model, pool, **kw), 1e-6)


def test_a_frozen_parameter_is_measured_by_func_and_loop_alike():
    torch.manual_seed(0)
    model = small_cnn().double()
    model[0].weight.requires_grad_(False)
    pool = image_pool()
    kw = dict(forward_fn=xy_forward, loss_fn=ce_loss)
    func = gradient_spectrum(model, pool, "conv", 0, method="func", **kw)
    loop = gradient_spectrum(model, pool, "conv", 0, method="loop", **kw)
    assert_spectra_equal(func, loop, 1e-6)
    unfrozen = copy.deepcopy(model)  # the reference loop differentiates trainable parameters only
    unfrozen[0].weight.requires_grad_(True)
    assert_spectra_equal(func, gradient_spectrum_reference(unfrozen, pool, "conv", 0, **kw), 1e-6)


@pytest.mark.parametrize("method", ["auto", "func", "loop"])
def test_measuring_any_model_leaves_grads_modes_and_rng_alone(method):
    torch.manual_seed(0)
    model = EncoderRegressor()
    model.train()
    g = torch.Generator().manual_seed(5)
    pool = (torch.randn(6, 5, 16, generator=g), torch.randn(6, generator=g))
    state = torch.get_rng_state()
    gradient_spectrum(model, pool, "q", -1, forward_fn=xy_forward, loss_fn=mse_loss, method=method)
    ss.measure.activation_spectrum(model, pool, forward_fn=xy_forward)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(state, torch.get_rng_state())


def test_pools_keep_their_dtype_and_token_ids_become_int64():
    from specscope.measure import _batches

    x = torch.randn(5, 3, dtype=torch.float64)
    (b,) = list(_batches({"x": x, "ids": torch.arange(5, dtype=torch.int32)}, 8, torch.device("cpu")))
    assert b["x"].dtype == torch.float64 and b["ids"].dtype == torch.int64
    assert next(_batches(torch.zeros(4, 2, dtype=torch.uint8), 2, torch.device("cpu"))).dtype == torch.uint8
    with pytest.raises(ValueError, match="batched along dim 0"):
        ss.measure.pool_len((torch.zeros(4, 2), torch.zeros(3)))


def test_clear_errors_for_a_missing_or_wrong_loss():
    model = small_cnn().double()
    with pytest.raises(ValueError, match="need loss_fn"):
        gradient_spectrum(model, image_pool()[0], "conv", 0)
    with pytest.raises(ValueError, match="one loss per sample"):
        gradient_spectrum(model, image_pool(), "conv", 0, batch=5, forward_fn=xy_forward,
                          loss_fn=lambda out, b: F.cross_entropy(out, b[1]))


def test_make_pool_of_samples_is_seeded_and_keeps_dtype():
    x, y = image_pool(40)
    a = ss.probes.make_pool((x, y), n=8, seed=3)
    b = ss.probes.make_pool((x, y), n=8, seed=3)
    assert a[0].shape == (8, 3, 8, 8) and a[0].dtype == torch.float64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# (e) the probes inside the monitor


def test_probes_in_the_monitor_on_a_cnn(tmp_path):
    torch.manual_seed(0)
    model = small_cnn().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pool = image_pool()
    probes = [ss.probes.Activations(pool, modules=["2"], forward_fn=xy_forward, every=2, name="act_conv"),
              ss.probes.Activations(pool, forward_fn=xy_forward, every=2, name="act_default"),
              ss.probes.Gradients(pool, "conv", -1, samples=8, forward_fn=xy_forward, loss_fn=ce_loss, every=2),
              ss.probes.Gradients(pool, matrix_name="6", forward_fn=xy_forward, loss_fn=ce_loss, every=2,
                                  name="grad_head")]
    with ss.Monitor(model, tmp_path / "r", probes=probes) as mon:
        for step in range(3):
            loss = ce_loss(model(pool[0]), pool).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(step, loss=loss.item())
    spec = ss.open_run(tmp_path / "r").spectra()
    last = spec[spec["step"] == 2].set_index("probe")
    assert last.loc["act_conv", "name"] == "2" and len(last.loc["act_conv", "values"]) == 8
    assert last.loc["act_default", "name"] == "6:input" and len(last.loc["act_default", "values"]) == 32
    direct = ss.measure.activation_spectrum(model, pool, module="2", forward_fn=xy_forward)
    np.testing.assert_allclose(last.loc["act_conv", "values"], direct, rtol=1e-10)
    grad = last.loc["gradients"]
    assert grad["kind"] == "conv" and len(grad["values"]) == 8
    np.testing.assert_allclose(grad["values"], gradient_spectrum(model, (pool[0][:8], pool[1][:8]), "conv", -1,
                                                                 forward_fn=xy_forward, loss_fn=ce_loss), rtol=1e-8)
    assert last.loc["grad_head", "name"] == "6" and last.loc["grad_head", "status"] == "ok"
    np.testing.assert_allclose(last.loc["grad_head", "values"], gradient_spectrum(model, pool, name="6", forward_fn=xy_forward,
                                                                                  loss_fn=ce_loss), rtol=1e-8)


def test_bad_probe_configurations_record_nan_with_a_status(tmp_path, caplog):
    torch.manual_seed(0)
    model = EncoderRegressor()
    g = torch.Generator().manual_seed(6)
    pool = (torch.randn(6, 5, 16, generator=g), torch.randn(6, generator=g))
    probes = [ss.probes.Activations(pool, layers=[99], forward_fn=xy_forward, every=1, name="act99"),
              ss.probes.Gradients(pool[0], "q", -1, every=1, name="no_loss"),
              ss.probes.Gradients(pool, "q", 99, forward_fn=xy_forward, loss_fn=mse_loss, every=1, name="grad99"),
              ss.probes.Activations(pool, forward_fn=xy_forward, every=1, name="ok")]
    with caplog.at_level(logging.WARNING), ss.Monitor(model, tmp_path / "r", probes=probes) as mon:
        for step in range(2):
            mon.step(step, loss=1.0)
    assert "setup failed" in caplog.text
    m = ss.open_run(tmp_path / "r").metrics()
    err = m[m["metric"] == "probe_error"].groupby("probe").first()
    assert set(err.index) == {"act99", "no_loss", "grad99"}
    assert err["value"].isna().all()
    assert "layer 99 is out of range" in err.loc["act99", "status"]
    assert "need loss_fn" in err.loc["no_loss", "status"]
    assert "layer 99" in err.loc["grad99", "status"]
    assert (m[m["probe"] == "ok"]["status"] != "").all() and len(m[m["probe"] == "ok"])
