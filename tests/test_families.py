"""The matrix catalog on tiny models of each family, built from configs (no downloads)."""
import pytest
import torch
from torch import nn

import specscope as ss

transformers = pytest.importorskip("transformers")

D, H, L, V, FF = 32, 4, 2, 50, 48


def kinds_by_layer(cat):
    return {(r.layer, r.kind): r for r in cat}


def _zero_biases(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.zero_()


def test_gpt2_conv1d_split_equals_query_projection():
    cfg = transformers.GPT2Config(n_embd=D, n_head=H, n_layer=L, vocab_size=V, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    _zero_biases(model)
    by = kinds_by_layer(ss.catalog(model))
    for layer in range(L):
        for k in ("q", "k", "v", "o"):
            assert by[(layer, k)].shape == (D, D)
        assert by[(layer, "mlp_in")].shape == (4 * D, D) and by[(layer, "mlp_out")].shape == (D, 4 * D)
    assert by[(-1, "embed")].shape == (V, D)
    x = torch.randn(3, D)
    attn = model.transformer.h[1].attn
    qkv = attn.c_attn(x)
    for i, k in enumerate(("q", "k", "v")):
        torch.testing.assert_close(x @ by[(1, k)].read().T, qkv[:, i * D:(i + 1) * D])
    torch.testing.assert_close(x @ by[(1, "o")].read().T, attn.c_proj(x))
    torch.testing.assert_close(x @ by[(0, "mlp_in")].read().T, model.transformer.h[0].mlp.c_fc(x))


def test_neox_interleaved_split_equals_query_projection():
    cfg = transformers.GPTNeoXConfig(hidden_size=D, num_attention_heads=H, num_hidden_layers=L, vocab_size=V,
                                     intermediate_size=FF, max_position_embeddings=16)
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    _zero_biases(model)
    by = kinds_by_layer(ss.catalog(model))
    assert by[(0, "o")].shape == (D, D) and by[(0, "mlp_in")].shape == (FF, D) and by[(0, "mlp_out")].shape == (D, FF)
    assert by[(-1, "embed")].shape == (V, D) and by[(-1, "lm_head")].shape == (V, D)
    x = torch.randn(5, D)
    qkv = model.gpt_neox.layers[1].attention.query_key_value(x).view(5, H, 3 * (D // H))
    hd = D // H
    for i, k in enumerate(("q", "k", "v")):
        ref = qkv[..., i * hd:(i + 1) * hd].reshape(5, D)  # how the model itself splits per head
        torch.testing.assert_close(x @ by[(1, k)].read().T, ref)


@pytest.mark.parametrize("name", ["Llama", "Mistral", "Qwen2"])
def test_llama_family_separate_projections(name):
    cfg = getattr(transformers, f"{name}Config")(hidden_size=D, num_attention_heads=H, num_key_value_heads=2,
                                                  num_hidden_layers=L, vocab_size=V, intermediate_size=FF,
                                                  max_position_embeddings=16)
    model = getattr(transformers, f"{name}ForCausalLM")(cfg)
    by = kinds_by_layer(ss.catalog(model))
    for layer in range(L):
        assert by[(layer, "q")].shape == (D, D)
        assert by[(layer, "k")].shape == (D // 2, D) and by[(layer, "v")].shape == (D // 2, D)  # GQA
        assert by[(layer, "mlp_gate")].shape == (FF, D) and by[(layer, "mlp_in")].shape == (FF, D)
        assert by[(layer, "mlp_out")].shape == (D, FF)
    assert torch.equal(by[(1, "q")].read(), model.model.layers[1].self_attn.q_proj.weight)
    assert not any(r.kind == "other" for r in ss.catalog(model))


class NanoBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(D, 3 * D, bias=False)
        self.attn.c_proj = nn.Linear(D, D, bias=False)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(D, 4 * D, bias=False)
        self.mlp.c_proj = nn.Linear(4 * D, D, bias=False)


class NanoGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(V, D), "h": nn.ModuleList([NanoBlock() for _ in range(L)])})
        self.lm_head = nn.Linear(D, V, bias=False)


def test_nanogpt_linear_c_attn_split():
    model = NanoGPT()
    by = kinds_by_layer(ss.catalog(model))
    x = torch.randn(2, D)
    q, k, v = model.transformer.h[0].attn.c_attn(x).split(D, dim=-1)
    torch.testing.assert_close(x @ by[(0, "q")].read().T, q)
    torch.testing.assert_close(x @ by[(0, "v")].read().T, v)
    assert by[(0, "mlp_in")].shape == (4 * D, D) and by[(1, "o")].shape == (D, D)
    assert by[(-1, "lm_head")].shape == (V, D)
