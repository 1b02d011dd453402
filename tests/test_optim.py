"""Trainer switches: schedules, Muon, weight-decay groups, QK-norm, soft-cap, spectral warm-up."""
import numpy as np
import pytest
import torch

from specscope.errors import ConfigError
from specscope.train import GPT, GPTConfig, TrainConfig
from specscope.train.optim import Muon, Optimizers, lr_at, make_optimizer, newton_schulz, parameter_groups
from specscope.train.warmup import resample_spectrum, spectral_warmup


def test_wsd_and_step_schedules():
    wsd = TrainConfig(steps=100, lr=1.0, warmup=10, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.0)
    assert lr_at(5, wsd) == pytest.approx(0.6) and lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0
    assert lr_at(89, wsd) == pytest.approx(0.5) and lr_at(99, wsd) == pytest.approx(0.0)
    step = TrainConfig(steps=100, lr=1.0, warmup=0, schedule="step", step_milestones=(0.5, 0.75), step_gamma=0.1)
    assert [lr_at(s, step) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ConfigError):
        TrainConfig(schedule="linear")


def test_newton_schulz_gives_near_equal_singular_values():
    g = torch.Generator().manual_seed(0)
    # Gaussian gradients with rows scaled over a decade; rectangular, so no singular value sits near 0
    # (5 quintic steps lift singular values above ~1e-3 of the largest; a near-null direction stays small)
    for shape in [(64, 96), (48, 128), (128, 48)]:
        grad = torch.randn(*shape, generator=g) * torch.logspace(0, 1, shape[0])[:, None]
        s = torch.linalg.svdvals(newton_schulz(grad))
        assert s.min() > 0.6 and s.max() < 1.25  # near the polar factor's all-ones spectrum
        s_g = torch.linalg.svdvals(grad)
        assert s_g.max() / s_g.min() > 5  # the gradient itself is far from equal


def test_muon_update_is_scaled_polar_factor():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(96, 32))
    opt = Muon([w], lr=1.0, momentum=0.95, nesterov=True)
    grad = torch.randn(96, 32)
    w.grad = grad.clone()
    opt.step()
    # first step: buf = g, Nesterov direction g + 0.95 g; update = -NS(1.95 g) * sqrt(96 / 32)
    expected = -newton_schulz(1.95 * grad) * np.sqrt(3)
    torch.testing.assert_close(w.detach(), expected)
    s = torch.linalg.svdvals(w.detach()) / np.sqrt(3)
    assert s.min() > 0.6 and s.max() < 1.25


def test_optimizer_groups_and_decay_on():
    model = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=2, n_head=2, d_model=16, tied=False))
    groups = parameter_groups(model)
    assert len(groups["hidden"]) == 2 * 6 and len(groups["embed"]) == 2 and len(groups["head"]) == 1
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1, decay_on=("hidden",))
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, Optimizers) and isinstance(opt.opts[0], Muon)
    assert opt.opts[0].param_groups[0]["lr_scale"] == pytest.approx(20.0)
    decays = {g["weight_decay"] for g in opt.opts[1].param_groups}
    assert decays == {0.0}  # embed, head, scalars: no decay
    x = torch.randint(0, 32, (2, 8))
    _, loss = model(x, x)
    loss.backward()
    before = model.blocks[0].attn.q.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.blocks[0].attn.q.weight)


def test_qk_norm_and_softcap():
    cfg = GPTConfig(vocab_size=32, seq_len=8, n_layer=1, n_head=2, d_model=16, qk_norm=True, softcap=2.0)
    m = GPT(cfg)
    with torch.no_grad():
        m.lm_head.weight.mul_(1000)
        logits, _ = m(torch.randint(0, 32, (2, 8)))
    assert logits.abs().max() <= 2.0
    with pytest.raises(ValueError):
        GPTConfig(softcap=-1.0)


def test_spectral_warmup_copies_reference_spectra(tmp_path):
    from safetensors.torch import save_model

    ref = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=2, n_head=2, d_model=16))
    with torch.no_grad():
        ref.blocks[1].mlp.fc.weight.copy_(torch.randn(64, 16) * torch.logspace(0, -2, 16))
    save_model(ref, str(tmp_path / "ref.safetensors"))
    model = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=2, n_head=2, d_model=16))
    assert spectral_warmup(model, tmp_path / "ref.safetensors", scale=0.5, seed=1) == 2 * 6
    for a, b in [(model.blocks[1].mlp.fc.weight, ref.blocks[1].mlp.fc.weight), (model.blocks[0].attn.q.weight,
                                                                                   ref.blocks[0].attn.q.weight)]:
        torch.testing.assert_close(torch.linalg.svdvals(a.detach().double()), 0.5 * torch.linalg.svdvals(b.detach().double()))
        assert not torch.allclose(a, 0.5 * b)  # new singular vectors
    s = np.array([8.0, 4.0, 2.0, 1.0])
    np.testing.assert_allclose(resample_spectrum(s, 4), s)
    # s_j = 8 * 2^-j at relative ranks (j + 0.5) / 4, log-linear between them and flat beyond the ends
    pos = (np.arange(8) + 0.5) / 8
    np.testing.assert_allclose(resample_spectrum(s, 8), 8 * 2.0 ** -np.clip((pos - 0.125) / 0.25, 0, 3), rtol=1e-12)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, optimizer):
    from specscope.train import train
    from specscope.train.corpus import Corpus

    rng = np.random.default_rng(0)
    toks = rng.integers(0, 64, 20_000).astype(np.int32)
    corpus = Corpus("synthetic", "byte", 64, toks, toks[:4000], toks[:4000])
    mcfg = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=16)
    base = dict(steps=12, micro_batch=4, lr=1e-2, warmup=2, eval_every=4, probe_every=4, lens_every=0, optimizer=optimizer)
    whole = train(mcfg, TrainConfig(**base), tmp_path / "whole", corpus=corpus, progress=False)
    part = train(mcfg, TrainConfig(**base, stop_at=5), tmp_path / "part", corpus=corpus, progress=False)
    assert part.steps == 5 and (tmp_path / "part" / "checkpoints" / "state.pt").exists()
    rest = train(mcfg, TrainConfig(**base), tmp_path / "part", corpus=corpus, progress=False, resume=True)
    assert rest.steps == 12 and rest.tokens == whole.tokens
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "checkpoints" / "step_0000012.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "step_0000012.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    import specscope as ss

    sc = ss.open_run(tmp_path / "part").scalars()
    assert sc["step"].is_unique and sc["step"].max() == 12  # one row per step, appended to the same store
    meta = (tmp_path / "part" / "meta.json").read_text()
    again = train(mcfg, TrainConfig(**base), tmp_path / "part", corpus=corpus, progress=False, resume=True)
    assert again.final_val_loss == rest.final_val_loss and again.tokens == rest.tokens  # a finished run: nothing to do
    assert (tmp_path / "part" / "meta.json").read_text() == meta and len(ss.open_run(tmp_path / "part").scalars()) == len(sc)


def test_evaluation_windows_do_not_depend_on_the_training_batch():
    from specscope.train.trainer import evaluate

    toks = np.random.default_rng(1).integers(0, 64, 5_000).astype(np.int32)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=1, n_head=2, d_model=16))
    small, large = TrainConfig(micro_batch=1), TrainConfig(micro_batch=16, grad_accum=4)
    assert evaluate(model, toks, small, 16, torch.device("cpu")) == evaluate(model, toks, large, 16, torch.device("cpu"))
    with pytest.raises(ConfigError):
        TrainConfig(eval_batch=0)
