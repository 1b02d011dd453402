"""StepGradients (per-sample gradients piggybacked on the training step): known answers against
``gradient_spectrum`` / the loop reference on the same batch with the parameters of that step's forward,
gradient accumulation, the user's ``.grad`` untouched, hooks only while armed, failures as NaN rows."""
import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import specscope as ss
from specscope.errors import ConfigError
from specscope.measure import gradient_spectrum, gradient_spectrum_reference
from specscope.streams.grad_gram import blocked_gram
from specscope.train import GPT, GPTConfig

CFG = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32)


def token_losses(out, batch):
    """Mean next-token loss of each sequence, in the model's dtype (float64 here)."""
    logits = out[0][:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none")
    return ce.view(len(batch), -1).mean(1)


def gpt_step_loss(model, x):
    return model(x[:, :-1], x[:, 1:])[1]  # the batch mean over tokens = the mean of the per-sequence losses


def xy_forward(model, batch):
    return model(batch[0])


def ce_losses(out, batch):
    return F.cross_entropy(out, batch[1], reduction="none")


def mlp_step_loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def gpt_batches(steps, micro=1, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randint(0, 64, (size, 16), generator=g) for _ in range(micro)] for _ in range(steps)]


def mlp_batches(steps, micro=1, size=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(size, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g))
             for _ in range(micro)] for _ in range(steps)]


def train(model, batches, step_loss, run_dir, probes=(), scale=None):
    """A plain training loop calling ``mon.step`` after each optimizer step. Returns the run directory, a copy of
    the model as it was at each step's forward, and each step's ``.grad`` of every parameter."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before, grads = {}, []
    with ss.Monitor(model, run_dir, probes) as mon:
        for step, micro in enumerate(batches):
            opt.zero_grad()
            before[step] = copy.deepcopy(model)
            for mb in micro:
                loss = step_loss(model, mb)
                (loss / len(micro) if scale is None else loss * scale).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
            opt.step()
            mon.step(step, loss=float(loss.detach()))
    return mon.run_dir, before, grads


def cat(micro):
    if isinstance(micro[0], torch.Tensor):
        return torch.cat(micro)
    return tuple(torch.cat(parts) for parts in zip(*micro))


def spectra(run_dir, probe="step_gradients"):
    return {int(r["step"]): (np.asarray(r["values"]), r["status"])
            for _, r in ss.open_run(run_dir).spectra(probe=probe).iterrows()}


def errors(run_dir, probe="step_gradients"):
    m = ss.open_run(run_dir).metrics()
    m = m[(m["probe"] == probe) & (m["metric"] == "probe_error")]
    return {int(r["step"]): (r["value"], r["status"], r["name"]) for _, r in m.iterrows()}


def assert_spectra_equal(got, ref, rtol=1e-6):
    assert len(got) == len(ref)
    keep = ref > 1e-8 * ref[0]
    np.testing.assert_allclose(got[keep], ref[keep], rtol=rtol)


@pytest.mark.parametrize("micro", [1, 2])
def test_gpt_piggyback_equals_gradient_spectrum_of_the_step_batch(tmp_path, micro):
    torch.manual_seed(0)
    batches = gpt_batches(7, micro=micro, size=6 // micro)
    run, before, _ = train(GPT(CFG).double(), batches, gpt_step_loss, tmp_path,
                           [ss.probes.StepGradients("o", -1, every=3)])
    got = spectra(run)
    assert sorted(got) == [0, 3, 6]
    for step, (values, status) in got.items():
        assert status == "ok"
        ref = gradient_spectrum(before[step], cat(batches[step]), "o", -1, loss_fn=token_losses)
        assert_spectra_equal(values, ref)
    ref = gradient_spectrum_reference(before[3], cat(batches[3]), "o", -1, loss_fn=token_losses)
    assert_spectra_equal(got[3][0], ref)


@pytest.mark.parametrize("matrix", ["q", "mlp_in"])
def test_gpt_other_matrices(tmp_path, matrix):
    torch.manual_seed(1)
    batches = gpt_batches(2, size=5)
    run, before, _ = train(GPT(CFG).double(), batches, gpt_step_loss, tmp_path,
                           [ss.probes.StepGradients(matrix, 0, every=1)])
    for step, (values, status) in spectra(run).items():
        assert_spectra_equal(values, gradient_spectrum(before[step], cat(batches[step]), matrix, 0, loss_fn=token_losses))


@pytest.mark.parametrize("micro", [1, 3])
def test_mlp_classifier_equals_loop_reference(tmp_path, micro):
    batches = mlp_batches(5, micro=micro, size=9 // micro)
    run, before, _ = train(mlp(), batches, mlp_step_loss, tmp_path,
                           [ss.probes.StepGradients(matrix_name="2", every=2)])
    got = spectra(run)
    assert sorted(got) == [0, 2, 4]
    for step, (values, _) in got.items():
        pool = cat(batches[step])
        kw = dict(name="2", loss_fn=ce_losses, forward_fn=xy_forward)
        assert_spectra_equal(values, gradient_spectrum_reference(before[step], pool, **kw))
        assert_spectra_equal(values, gradient_spectrum(before[step], pool, **kw))


def layer_by_layer_loss(model, batch):
    h = batch[0]
    for layer in model:  # the model itself is never called: its forward pre-hook does not run
        h = layer(h)
    return F.cross_entropy(h, batch[1])


def test_model_never_called_as_a_whole(tmp_path):
    batches = mlp_batches(2, micro=3, size=3)
    run, before, _ = train(mlp(), batches, layer_by_layer_loss, tmp_path,
                           [ss.probes.StepGradients(matrix_name="2", every=1)])
    for step, (values, _) in spectra(run).items():
        ref = gradient_spectrum(before[step], cat(batches[step]), name="2", loss_fn=ce_losses, forward_fn=xy_forward)
        assert_spectra_equal(values, ref)


def test_sum_reduction(tmp_path):
    batches = mlp_batches(2, size=6)
    run, before, _ = train(mlp(), batches, lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="sum"), tmp_path,
                           [ss.probes.StepGradients(matrix_name="4", every=1, reduction="sum")], scale=1.0)
    for step, (values, _) in spectra(run).items():
        ref = gradient_spectrum(before[step], cat(batches[step]), name="4", loss_fn=ce_losses, forward_fn=xy_forward)
        assert_spectra_equal(values, ref)


def test_user_gradients_and_training_unchanged(tmp_path):
    batches = gpt_batches(4, micro=2, size=3)
    torch.manual_seed(0)
    plain = GPT(CFG).double()
    with_probe = copy.deepcopy(plain)
    _, _, g0 = train(plain, batches, gpt_step_loss, tmp_path / "plain")
    _, _, g1 = train(with_probe, batches, gpt_step_loss, tmp_path / "probe", [ss.probes.StepGradients(every=1)])
    for a, b in zip(g0, g1):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), with_probe.parameters()))


def test_hooks_only_while_a_step_is_due(tmp_path):
    model = mlp()
    layer = model[2]
    probe = ss.probes.StepGradients(matrix_name="2", every=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    armed = []
    with ss.Monitor(model, tmp_path, [probe]) as mon:
        for step, (micro,) in enumerate(mlp_batches(7)):
            armed.append(bool(layer._forward_hooks) or bool(model._forward_pre_hooks))
            opt.zero_grad()
            mlp_step_loss(model, micro).backward()
            opt.step()
            mon.step(step)
    # armed at the monitor's start (for the first step) and at the monitor step before each due step
    assert armed == [True, False, False, True, False, False, True]
    assert not layer._forward_hooks and not model._forward_pre_hooks
    assert sorted(spectra(tmp_path)) == [0, 3, 6]


def test_other_probes_measuring_at_that_step_are_not_captured(tmp_path):
    batches = gpt_batches(4, size=4)
    torch.manual_seed(0)
    pool = torch.randint(0, 64, (5, 16))
    probes = [ss.probes.StepGradients(every=1), ss.probes.Gradients(pool, every=1, name="hooks"),
              ss.probes.Gradients(pool, every=1, method="loop", name="loop"),
              ss.probes.Gradients(pool, every=1, method="func", name="func"),
              ss.probes.Activations(pool, every=1)]
    run, before, _ = train(GPT(CFG).double(), batches, gpt_step_loss, tmp_path, probes)
    got = spectra(run)
    assert sorted(got) == [0, 1, 2, 3]
    for step, (values, _) in got.items():
        assert_spectra_equal(values, gradient_spectrum(before[step], batches[step][0], loss_fn=token_losses))
    assert sorted(spectra(run, "loop")) == [0, 1, 2, 3]


class Checkpointed(nn.Module):
    """The probed layer called four times per forward, in two activation-checkpointed segments."""

    def __init__(self, reentrant: bool | None):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.mid, self.out = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.reentrant = reentrant

    def _segment(self, h):
        return self.mid(torch.tanh(self.mid(h)))

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for _ in range(2):
            h = self._segment(h) if self.reentrant is None else checkpoint(self._segment, h, use_reentrant=self.reentrant)
        return self.out(torch.tanh(h))


@pytest.mark.parametrize("reentrant", [None, False, True])
def test_layer_called_twice_and_checkpointed(tmp_path, reentrant):
    batches = mlp_batches(3, micro=2, size=4)
    run, before, _ = train(Checkpointed(reentrant).double(), batches, mlp_step_loss, tmp_path,
                           [ss.probes.StepGradients(matrix_name="mid", every=1)])
    got = spectra(run)
    assert sorted(got) == [0, 1, 2]
    for step, (values, _) in got.items():
        plain = Checkpointed(None).double()  # the reference loop's autograd.grad cannot run a reentrant checkpoint
        plain.load_state_dict(before[step].state_dict())
        ref = gradient_spectrum_reference(plain, cat(batches[step]), name="mid", loss_fn=ce_losses,
                                          forward_fn=xy_forward)
        assert_spectra_equal(values, ref)


def test_not_hookable_is_a_config_error_and_a_nan_row(tmp_path, caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 3)).double()
    probe = ss.probes.StepGradients(matrix_name="0", every=1)
    with pytest.raises(ConfigError, match="hookable"):
        probe.setup(model)
    g = torch.Generator().manual_seed(0)
    batches = [[(torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g))]
               for _ in range(2)]
    with caplog.at_level(logging.WARNING):
        run, _, _ = train(model, batches, mlp_step_loss, tmp_path, [ss.probes.StepGradients(matrix_name="0", every=1)])
    rows = errors(run)
    assert sorted(rows) == [0, 1]
    for value, status, name in rows.values():
        assert np.isnan(value) and name == "0"
        assert "hookable" in status and "Gradients" in status
    assert not model[0]._forward_hooks and not model._forward_pre_hooks


def test_capture_failure_is_nan_and_training_goes_on(tmp_path, monkeypatch):
    def broken(*_):
        raise RuntimeError("boom")

    monkeypatch.setattr("specscope.probes.step_gradients.factor_rows", broken)
    batches = mlp_batches(3)
    torch.manual_seed(0)
    _, _, g0 = train(mlp(), batches, mlp_step_loss, tmp_path / "plain")
    run, _, g1 = train(mlp(), batches, mlp_step_loss, tmp_path / "probe",
                       [ss.probes.StepGradients(matrix_name="2", every=1)])
    rows = errors(run)
    assert sorted(rows) == [0, 1, 2]
    assert all(np.isnan(v) and "capture failed: RuntimeError: boom" in s for v, s, _ in rows.values())
    for a, b in zip(g0, g1):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_steps_without_capture_say_why(tmp_path):
    model = mlp()
    probe = ss.probes.StepGradients(matrix_name="2", every=5)
    (micro,), = mlp_batches(1)
    with ss.Monitor(model, tmp_path, [probe]) as mon:
        mon.step(0)  # nothing trained before this monitor step
        mon.step(3)  # step 4 never reported: step 5 was not armed
        mlp_step_loss(model, micro).backward()
        mon.step(5)
        mon.step(9)
        model(micro[0]).sum()  # a forward, no backward
        mon.step(10)
    rows = errors(tmp_path)
    assert sorted(rows) == [0, 5, 10]
    assert "no training forward through 2 since the probe was armed" in rows[0][1]
    assert "no training step captured for step 5" in rows[5][1]
    assert "got no gradient" in rows[10][1]


def test_a_pass_started_without_grad_is_not_captured(tmp_path):
    """A measurement pass of another tool: no grad from the model's input, grad switched on at the layer."""
    batches = mlp_batches(2, size=5)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {}

    def grad_from_here(_mod, _args):
        torch.set_grad_enabled(True)

    with ss.Monitor(model, tmp_path, [ss.probes.StepGradients(matrix_name="2", every=1)]) as mon:
        for step, (micro,) in enumerate(batches):
            opt.zero_grad()
            before[step] = copy.deepcopy(model)
            mlp_step_loss(model, micro).backward()
            opt.step()
            mon.step(step)
            handle = model[2].register_forward_pre_hook(grad_from_here)
            with torch.no_grad():
                out = model(micro[0] + 1)
                torch.autograd.grad(out.sum(), [model[2].weight])
            handle.remove()
    for step, (values, _) in spectra(tmp_path).items():
        ref = gradient_spectrum(before[step], batches[step][0], name="2", loss_fn=ce_losses, forward_fn=xy_forward)
        assert_spectra_equal(values, ref)


def test_forward_without_grad_or_backward_is_not_captured(tmp_path):
    batches = mlp_batches(2, size=5)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {}
    with ss.Monitor(model, tmp_path, [ss.probes.StepGradients(matrix_name="2", every=1)]) as mon:
        for step, (micro,) in enumerate(batches):
            with torch.no_grad():
                model(micro[0])  # an evaluation pass
            model(micro[0] * 2).sum()  # a forward never differentiated
            opt.zero_grad()
            before[step] = copy.deepcopy(model)
            mlp_step_loss(model, micro).backward()
            opt.step()
            mon.step(step)
    for step, (values, _) in spectra(tmp_path).items():
        ref = gradient_spectrum(before[step], batches[step][0], name="2", loss_fn=ce_losses, forward_fn=xy_forward)
        assert_spectra_equal(values, ref)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="reduction"):
        ss.probes.StepGradients(reduction="batchmean")
    with pytest.raises(ConfigError, match="layer"):
        ss.probes.StepGradients(layer="last")
    with pytest.raises(ConfigError, match="kind"):
        ss.probes.StepGradients(matrix="nope")
    with pytest.raises(ConfigError, match="no matrix"):
        ss.probes.StepGradients(matrix="o").setup(mlp())


@pytest.mark.parametrize("keep_bytes", [0, 2**30])
def test_blocked_gram_equals_the_materialized_gram(keep_bytes):
    g = torch.randn(11, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = []

    def rows(lo, hi):
        calls.append(lo)
        return g[lo:hi]

    gram = blocked_gram(11, rows, 3, torch.device("cpu"), keep_bytes=keep_bytes)
    np.testing.assert_allclose(gram.numpy(), (g @ g.T).numpy(), rtol=1e-13, atol=1e-13)
    assert len(calls) == (4 if keep_bytes else 4 + 3 + 2 + 1)  # each chunk once, or once per block it meets
