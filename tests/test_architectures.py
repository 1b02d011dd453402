"""The catalog on architectures beyond the reference GPT (SPEC 1.1), built from configs only.

For each model: every expected ``(layer, kind, part)``, the split values against slices of the
raw tensors, and, for HF models, the live catalog equal to the offline one of its saved weights
(``save_pretrained`` then ``ss.analyze(dir)``: the same rows, the same values).
"""
import logging
import socket

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import specscope as ss
from specscope.models.loading import resolve

transformers = pytest.importorskip("transformers")

D, H, FF = 32, 4, 48
KEY = ["layer", "kind", "part"]
VALUES = ["d_out", "d_in", "slices", "stable_rank", "spectral_norm", "frob_sq", "entropy", "alpha_mle"]


def keys(cat) -> set:
    return {(r.layer, r.kind, r.part) for r in cat}


def by_key(cat) -> dict:
    out = {}
    for r in cat:
        out.setdefault((r.layer, r.kind, r.part), []).append(r)
    return out


def assert_live_equals_offline(model, tmp_path):
    """The same rows and values live and from the saved directory (names may differ: HF renames on save)."""
    model.save_pretrained(tmp_path / "saved")
    live = ss.analyze(model, progress=False)
    off = ss.analyze(tmp_path / "saved", progress=False)
    assert len(live) == len(off)
    live, off = (df.sort_values(KEY + ["frob_sq"], kind="stable").reset_index(drop=True) for df in (live, off))
    pd.testing.assert_frame_equal(live[KEY], off[KEY])
    np.testing.assert_allclose(live[VALUES].to_numpy(float), off[VALUES].to_numpy(float), rtol=1e-6, equal_nan=True)
    return live


def test_torch_transformer_encoder_in_proj_split():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, batch_first=True), num_layers=2)
    cat = ss.catalog(enc)
    assert keys(cat) == {(l, k, -1) for l in (0, 1) for k in ("q", "k", "v", "o", "mlp_in", "mlp_out")}
    by = by_key(cat)
    for layer in (0, 1):
        attn = enc.layers[layer].self_attn
        for i, k in enumerate(("q", "k", "v")):
            (ref,) = by[(layer, k, -1)]
            assert torch.equal(ref.read(), attn.in_proj_weight[i * D:(i + 1) * D]) and ref.param.endswith("in_proj_weight")
        assert torch.equal(by[(layer, "o", -1)][0].read(), attn.out_proj.weight)
        assert not by[(layer, "o", -1)][0].hookable  # attention uses the weight, never calls out_proj
        assert torch.equal(by[(layer, "mlp_in", -1)][0].read(), enc.layers[layer].linear1.weight)
        assert by[(layer, "mlp_out", -1)][0].shape == (D, FF)
    # the split reproduces the attention's own projection
    x = torch.randn(5, D)
    q = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)[:, :D] - attn.in_proj_bias[:D]
    torch.testing.assert_close(x @ by[(1, "q", -1)][0].read().T, q)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio = nn.Conv1d(3, 16, 5)
        self.image = nn.Sequential(nn.Conv2d(3, 24, 3), nn.ReLU(), nn.Conv2d(24, 40, (3, 2)))
        self.head = nn.Linear(40, 10)


def test_cnn_conv_slices_pooled_by_kernel_position():
    torch.manual_seed(0)
    net = SmallCNN()
    cat = ss.catalog(net)
    assert [(r.name, r.layer, r.kind, r.part, r.shape, r.slices) for r in cat] == [
        ("audio", 0, "conv", -1, (16, 3), 5), ("image.0", 1, "conv", -1, (24, 3), 9), ("image.2", 2, "conv", -1, (40, 24), 6),
        ("head", 3, "other", -1, (10, 40), 1)]
    conv = cat[2]
    stack = conv.read()
    w = net.image[2].weight
    for pos in range(6):  # one c_out x c_in matrix per kernel position
        assert torch.equal(stack[pos], w[:, :, pos // 2, pos % 2])
    # the pooled spectrum: the singular values of every kernel slice, together, descending
    brute = np.sort(np.concatenate([np.linalg.svd(w[:, :, i, j].detach().double().numpy(), compute_uv=False)
                                    for i in range(3) for j in range(2)]))[::-1]
    df = ss.analyze(net, progress=False).set_index("name")
    assert df.loc["image.2", "spectral_norm"] == pytest.approx(brute[0], rel=1e-10)
    assert df.loc["image.2", "stable_rank"] == pytest.approx((brute ** 2).sum() / brute[0] ** 2, rel=1e-10)
    assert df.loc["audio", "slices"] == 5 and (df["status"] == "ok").sum() >= 3


def test_conv_alpha_matches_weightwatcher():
    """WeightWatcher 0.7.7 pools the eigenvalues of every kernel slice of a Conv2d into one ESD; its
    default conv2d_norm rescales them (lambda_max half the raw one here) and exponents are scale-free."""
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(48, 96, 3), nn.Conv2d(96, 64, 5), nn.Conv2d(32, 64, (3, 1)))
    heavy = torch.distributions.StudentT(torch.tensor([3.0]))
    with torch.no_grad():
        for m in net:
            m.weight.copy_(heavy.sample(m.weight.shape).squeeze(-1))
    theirs = ww.WeightWatcher(model=net).analyze().reset_index(drop=True)
    ours = ss.analyze(net, progress=False)
    assert list(ours["kind"]) == ["conv"] * 3 and len(theirs) == 3
    np.testing.assert_allclose(ours["alpha_mle"], theirs["alpha"], rtol=1e-3)
    np.testing.assert_allclose(ours["ks_d"], theirs["D"], rtol=1e-3)
    np.testing.assert_allclose(ours["spectral_norm"] ** 2 / 2, theirs["lambda_max"], rtol=1e-3)  # the documented scale


@pytest.mark.parametrize("cls,gates", [(nn.LSTM, "ifgo"), (nn.GRU, "rzn")])
def test_recurrent_gates(cls, gates):
    torch.manual_seed(0)
    rnn = cls(8, 16, num_layers=2)
    cat = ss.catalog(rnn)
    g = len(gates)
    assert keys(cat) == {(l, k, p) for l in (0, 1) for k in ("rnn_ih", "rnn_hh") for p in range(g)}
    by = by_key(cat)
    for layer in (0, 1):
        for p in range(g):
            (ih,) = by[(layer, "rnn_ih", p)]
            (hh,) = by[(layer, "rnn_hh", p)]
            assert ih.name == f"weight_ih_l{layer}[{gates[p]}]"
            assert torch.equal(ih.read(), getattr(rnn, f"weight_ih_l{layer}")[p * 16:(p + 1) * 16])
            assert torch.equal(hh.read(), getattr(rnn, f"weight_hh_l{layer}")[p * 16:(p + 1) * 16])
    assert cat.skipped == {"1-D tensors": 4}  # the biases


def test_bidirectional_lstm_in_a_model_and_offline(tmp_path):
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(50, 8)
            self.lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
            self.out = nn.Linear(32, 5)

    torch.manual_seed(0)
    model = Tagger()
    cat = ss.catalog(model)
    assert (-1, "embed", -1) in keys(cat)
    assert {r.layer for r in cat if r.kind.startswith("rnn")} == {0, 1} and len(by_key(cat)[(0, "rnn_hh", 2)]) == 2
    assert by_key(cat)[(2, "other", -1)][0].name == "out"  # order in depth after the recurrent layers
    torch.save(model.state_dict(), tmp_path / "tagger.pt")
    off = resolve(tmp_path / "tagger.pt")[0].catalog()
    assert [(r.name, r.layer, r.kind, r.part) for r in off] == [(r.name, r.layer, r.kind, r.part) for r in cat]
    for a, b in zip(cat, off):
        assert torch.equal(a.read(), b.read())


def test_bert_names(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=FF,
                                  vocab_size=50, max_position_embeddings=32)
    model = transformers.BertModel(cfg)
    cat = ss.catalog(model)
    block = {(l, k, -1) for l in (0, 1) for k in ("q", "k", "v", "o", "mlp_in", "mlp_out")}
    assert block <= keys(cat) and (-1, "embed", -1) in keys(cat)
    assert not [r for r in cat if r.layer >= 0 and r.kind == "other"]
    by = by_key(cat)
    layer = model.encoder.layer[1]
    assert torch.equal(by[(1, "q", -1)][0].read(), layer.attention.self.query.weight)
    assert torch.equal(by[(1, "o", -1)][0].read(), layer.attention.output.dense.weight)
    assert torch.equal(by[(1, "mlp_in", -1)][0].read(), layer.intermediate.dense.weight)
    assert torch.equal(by[(1, "mlp_out", -1)][0].read(), layer.output.dense.weight)
    assert_live_equals_offline(model, tmp_path)


def test_vit_names_patch_conv_and_saved_legacy_names(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=FF,
                                 image_size=16, patch_size=4, num_labels=3)
    model = transformers.ViTForImageClassification(cfg)
    cat = ss.catalog(model)
    block = {(l, k, -1) for l in (0, 1) for k in ("q", "k", "v", "o", "mlp_in", "mlp_out")}
    assert block <= keys(cat) and (-1, "conv", -1) in keys(cat)
    (patch,) = by_key(cat)[(-1, "conv", -1)]
    assert patch.shape == (D, 3) and patch.slices == 16
    live = assert_live_equals_offline(model, tmp_path)  # saved under the older attention.attention.query names
    assert live.query("layer >= 0")["kind"].ne("other").all()


def _moe(name: str):
    torch.manual_seed(0)
    if name == "mixtral":
        cfg = transformers.MixtralConfig(hidden_size=D, intermediate_size=FF, num_hidden_layers=2, num_attention_heads=H,
                                         num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=64)
        return transformers.MixtralForCausalLM(cfg)
    cfg = transformers.Qwen2MoeConfig(hidden_size=D, intermediate_size=FF, moe_intermediate_size=24,
                                      shared_expert_intermediate_size=40, num_hidden_layers=2, num_attention_heads=H,
                                      num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, vocab_size=64)
    return transformers.Qwen2MoeForCausalLM(cfg)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_packed_experts_split_per_expert(name, tmp_path):
    model = _moe(name)
    cat = ss.catalog(model)
    experts = {(l, k, e) for l in (0, 1) for k in ("mlp_gate", "mlp_in", "mlp_out") for e in range(4)}
    assert experts <= keys(cat)
    assert {(l, "router", -1) for l in (0, 1)} <= keys(cat) and not any(r.kind == "other" for r in cat)
    mlp = model.model.layers[1].mlp
    packed = mlp.experts.gate_up_proj  # n_experts x (gate | up) x d, as the model computes it
    f = packed.shape[1] // 2
    by = by_key(cat)
    for e in range(4):
        assert torch.equal(by[(1, "mlp_gate", e)][0].read(), packed[e, :f])
        assert torch.equal(by[(1, "mlp_in", e)][0].read(), packed[e, f:])
        assert torch.equal(by[(1, "mlp_out", e)][0].read(), mlp.experts.down_proj[e])
    assert torch.equal(by[(1, "router", -1)][0].read(), mlp.gate.weight)
    if name == "qwen2_moe":  # the shared expert is one MLP beside the experts; its gate is a router too
        assert {(1, "mlp_gate", -1), (1, "mlp_in", -1), (1, "mlp_out", -1)} <= keys(cat)
        assert len(by[(1, "router", -1)]) == 2
    assert_live_equals_offline(model, tmp_path)  # saved per expert (w1 / w3 / w2 or gate/up/down_proj)


def test_unknown_model_order_in_depth_and_skips(caplog):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.norm = nn.BatchNorm2d(8)
            self.cell = nn.GRU(8, 8)
            self.codebook = nn.Parameter(torch.randn(2, 6, 8))
            self.scale = nn.Parameter(torch.ones(8))
            self.head = nn.Linear(8, 4)

    with caplog.at_level(logging.INFO, logger="specscope.models.catalog"):
        cat = ss.catalog(Odd())
    # in registration order: a module's own parameters come before its children's
    assert [(r.name, r.layer, r.kind) for r in cat if r.part <= 0] == [
        ("codebook", 0, "other"), ("stem", 1, "conv"), ("cell.weight_ih_l0[r]", 2, "rnn_ih"),
        ("cell.weight_hh_l0[r]", 2, "rnn_hh"), ("head", 3, "other")]
    assert by_key(cat)[(0, "other", -1)][0].shape == (12, 8)  # leading dims flattened into rows
    assert cat.skipped == {"1-D tensors": 7, "buffers": 3}  # 5 biases, norm weight, scale; BN stats
    assert "not cataloged: 7 1-D tensors, 3 buffers" in caplog.text


def test_wrapped_models_catalog_like_the_bare_one(tmp_path):
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=FF, vocab_size=50))
    bare = [(r.name, r.layer, r.kind, r.part) for r in ss.catalog(model)]
    assert (0, "q", -1) in {b[1:] for b in bare}  # the NeoX split needs the config, found through the wrapper
    compiled = torch.compile(model)  # nothing compiles until it is called
    assert [(r.name, r.layer, r.kind, r.part) for r in ss.catalog(compiled)] == bare
    ddp = _ddp(model)
    try:
        assert [(r.name, r.layer, r.kind, r.part) for r in ss.catalog(ddp)] == bare
    finally:
        torch.distributed.destroy_process_group()
    # saved state dicts with wrapper prefixes and a LoRA adapter catalog like the bare model
    sd = {}
    for k, v in model.state_dict().items():
        mod, _, leaf = k.rpartition(".")
        k2 = f"{mod}.base_layer.{leaf}" if k.endswith("query_key_value.weight") else k
        sd[f"module._orig_mod.base_model.model.{k2}"] = v
        if k.endswith("query_key_value.weight"):
            sd[f"module._orig_mod.base_model.model.{mod}.lora_A.default.weight"] = torch.zeros(4, D)
    torch.save(sd, tmp_path / "wrapped.pt")
    (tmp_path / "wrapped").mkdir()
    torch.save(sd, tmp_path / "wrapped" / "pytorch_model.bin")
    (tmp_path / "wrapped" / "config.json").write_text(model.config.to_json_string())
    off = resolve(tmp_path / "wrapped")[0].catalog()
    assert [(r.name, r.layer, r.kind, r.part) for r in off if r.kind != "lm_head"] == [b for b in bare if b[2] != "lm_head"]
    assert off.skipped["adapter parameters"] == 2


def _ddp(model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return nn.parallel.DistributedDataParallel(model)


def test_monitor_records_part_and_catalog_summary(tmp_path):
    model = _moe("mixtral")
    with ss.Monitor(model, tmp_path / "run", probes=[ss.probes.Weights(every=1, kinds=["mlp_out", "router"])]) as mon:
        mon.step(0, loss=1.0)
    run = ss.open_run(tmp_path / "run")
    m = run.metrics(metric="stable_rank")
    assert sorted(m.query("kind == 'mlp_out'")["part"].unique()) == [0, 1, 2, 3]
    assert (m.query("kind == 'router'")["part"] == -1).all() and len(m) == 2 * 4 + 2
    assert run.meta["catalog"]["matrices"] == len(ss.catalog(model)) and run.meta["catalog"]["skipped"]["1-D tensors"] == 5
    sp = run.spectra(kind="mlp_out")
    assert sorted(sp["part"]) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_gpt_oss_transposed_interleaved_experts():
    """GPT-OSS stores experts ``n_experts x d x 2f`` with gate / up in alternate columns."""
    torch.manual_seed(0)
    cfg = transformers.GptOssConfig(hidden_size=D, intermediate_size=24, num_hidden_layers=2, num_attention_heads=H,
                                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=64,
                                    head_dim=8)
    model = transformers.GptOssForCausalLM(cfg)
    by = by_key(ss.catalog(model))
    experts = model.model.layers[1].mlp.experts
    x = torch.randn(3, D)
    for e in range(4):
        gate_up = x @ experts.gate_up_proj[e]  # how the model computes it
        torch.testing.assert_close(x @ by[(1, "mlp_gate", e)][0].read().T, gate_up[:, ::2])
        torch.testing.assert_close(x @ by[(1, "mlp_in", e)][0].read().T, gate_up[:, 1::2])
        torch.testing.assert_close(gate_up[:, ::2] @ by[(1, "mlp_out", e)][0].read().T, gate_up[:, ::2] @ experts.down_proj[e])
    assert (1, "router", -1) in by


def test_deepseek_dense_then_moe_layers(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(hidden_size=D, intermediate_size=FF, moe_intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=H, num_key_value_heads=H, n_routed_experts=4,
                                        num_experts_per_tok=2, first_k_dense_replace=1, n_shared_experts=1, vocab_size=64,
                                        q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                        v_head_dim=8, n_group=2, topk_group=1)
    model = transformers.DeepseekV3ForCausalLM(cfg)
    k = keys(ss.catalog(model))
    assert {(0, "mlp_gate", -1), (0, "mlp_in", -1), (0, "mlp_out", -1)} <= k and not any(p >= 0 for l, _, p in k if l == 0)
    assert {(1, kind, e) for kind in ("mlp_gate", "mlp_in", "mlp_out") for e in range(4)} | {(1, "router", -1)} <= k
    assert (1, "other", -1) in k  # the latent-attention projections (q_a / kv_a ...) have no q / k / v kind
    assert_live_equals_offline(model, tmp_path)


@pytest.mark.parametrize("family", ["gpt2", "neox", "mixtral"])
def test_spectral_warmup_writes_every_split(family):
    """Warm-up sets each block matrix through its split (transposed, interleaved, per expert) to the
    reference's singular values."""
    from specscope.train.warmup import spectral_warmup

    def make(seed):
        torch.manual_seed(seed)
        if family == "gpt2":
            return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=D, n_head=H, n_layer=2, vocab_size=50,
                                                                        n_positions=16))
        if family == "neox":
            return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
                hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=FF, vocab_size=50))
        return _moe("mixtral")

    model, reference = make(0), make(1)
    n = spectral_warmup(model, reference, seed=3)
    mine, theirs = by_key(ss.catalog(model)), by_key(ss.catalog(reference))
    block = [k for k in mine if k[0] >= 0]
    assert n == sum(len(mine[k]) for k in block)
    for k in block:
        for a, b in zip(mine[k], theirs[k]):
            sa = torch.linalg.svdvals(a.read().double())
            torch.testing.assert_close(sa, torch.linalg.svdvals(b.read().double()), rtol=1e-5, atol=1e-6)
            assert not torch.allclose(a.read(), b.read())  # new singular vectors


class TimmBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(D, 3 * D)
        self.attn.proj = nn.Linear(D, D)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(D, FF)
        self.mlp.fc2 = nn.Linear(FF, D)


class TimmViT(nn.Module):
    """timm's VisionTransformer naming: patch_embed.proj, blocks.N.attn.qkv / proj, blocks.N.mlp.fc1 / fc2, head."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, D, 4, stride=4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, D))
        self.blocks = nn.Sequential(TimmBlock(), TimmBlock())
        self.head = nn.Linear(D, 10)


def test_timm_vit_qkv_rows():
    torch.manual_seed(0)
    model = TimmViT()
    cat = ss.catalog(model)
    assert {(l, k, -1) for l in (0, 1) for k in ("q", "k", "v", "o", "mlp_in", "mlp_out")} <= keys(cat)
    assert {(-1, "conv", -1), (-1, "other", -1)} <= keys(cat)  # patch embedding, position embedding and head
    by = by_key(cat)
    qkv = model.blocks[1].attn.qkv
    x = torch.randn(4, D)
    for i, k in enumerate(("q", "k", "v")):
        (ref,) = by[(1, k, -1)]
        assert ref.hookable and torch.equal(ref.out_index, torch.arange(i * D, (i + 1) * D))
        torch.testing.assert_close(x @ ref.read().T, qkv(x)[:, i * D:(i + 1) * D] - qkv.bias[i * D:(i + 1) * D])
