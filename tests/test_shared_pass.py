"""Activations and per-sample gradients due at one step over one pool share one forward pass: the same
spectra as each probe alone, the model's forward run once per batch instead of twice."""
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import specscope as ss
from specscope.monitor import share_groups
from specscope.probes import Measurement, Probe
from specscope.train import GPT, GPTConfig


def xy_forward(model, batch):
    return model(batch[0])


def ce_loss(out, batch):
    return F.cross_entropy(out, batch[1], reduction="none")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.features(x))


def _case(kind: str, n: int = 12):
    """(model, pool, Activations kwargs, Gradients kwargs) of one model family."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "gpt":  # the reference GPT: the deepest block's output, the last block's o
        model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32))
        return model, torch.randint(0, 64, (n, 16), generator=g), {}, {}
    fn = dict(forward_fn=xy_forward)
    if kind == "mlp":  # two hidden sites, the middle linear layer's gradients
        pool = (torch.randn(n, 10, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g))
        return MLP().double(), pool, dict(modules=["net.1", "net.2"], **fn), dict(matrix_name="net.2", loss_fn=ce_loss, **fn)
    pool = (torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g))  # float32 CNN
    return CNN(), pool, dict(modules=["features.2", "head:input"], **fn), dict(matrix_name="head", loss_fn=ce_loss, **fn)


class Forwards:
    """Counts calls of the model's forward (a forward pre-hook)."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, _mod, _args):
        self.n += 1


def _spectra(run_dir, step):
    spec = ss.open_run(run_dir).spectra()
    spec = spec[spec["step"] == step]
    return {(p, name): np.asarray(v) for p, name, v in zip(spec["probe"], spec["name"], spec["values"])}


def _assert_same(got: dict, want: dict):
    assert got.keys() == want.keys() and got
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, rtol=1e-10, atol=1e-10 * np.abs(w).max(), err_msg=str(key))


def _measure(tmp_path, label, model, probes, steps=(0, 1)):
    """Run ``probes`` in a monitor at ``steps``; forwards counted at the last step, spectra there."""
    count = Forwards(model)
    with ss.Monitor(model, tmp_path / label, probes=probes) as mon:
        for step in steps:
            count.n = 0
            mon.step(step, loss=1.0)
    return _spectra(tmp_path / label, steps[-1]), count.n


@pytest.mark.parametrize("kind", ["gpt", "mlp", "cnn"])
def test_shared_step_equals_each_probe_alone_with_one_forward_per_batch(tmp_path, kind):
    model, pool, akw, gkw = _case(kind)
    probes = lambda: (ss.probes.Activations(pool, every=1, batch=4, **akw),  # noqa: E731
                      ss.probes.Gradients(pool, every=1, batch=4, **gkw))
    act, grad = probes()
    assert [[p.name for p in g] for g in share_groups([act, grad])] == [["gradients", "activations"]]
    shared, n_shared = _measure(tmp_path, "shared", model, [act, grad])
    alone_a, n_a = _measure(tmp_path, "act", model, [probes()[0]])
    alone_g, n_g = _measure(tmp_path, "grad", model, [probes()[1]])
    assert n_shared == 3 and n_a == 3 and n_g == 3  # 12 samples, batches of 4: 3 forwards instead of 6
    _assert_same(shared, {**alone_a, **alone_g})
    assert len([k for k in shared if k[0] == "activations"]) == (1 if kind == "gpt" else 2)
    m = ss.open_run(tmp_path / "shared").metrics()
    assert (m["status"] != "").all() and "probe_error" not in set(m["metric"])


def test_trainer_shaped_probes_share_the_gradient_rows(tmp_path):
    """Gradients(samples=8) of a 16-sample pool (batches of 4): its 2 batches are the activations' first 2."""
    model, pool, _, _ = _case("gpt", 16)
    make = lambda: (ss.probes.Activations(pool, every=1, batch=4),  # noqa: E731
                    ss.probes.Gradients(pool, samples=8, every=1, batch=4))
    shared, n_shared = _measure(tmp_path, "shared", model, list(make()))
    alone_a, n_a = _measure(tmp_path, "act", model, [make()[0]])
    alone_g, n_g = _measure(tmp_path, "grad", model, [make()[1]])
    assert (n_shared, n_a, n_g) == (4, 4, 2)
    _assert_same(shared, {**alone_a, **alone_g})
    assert len(shared[("gradients", "blocks.1.attn.o")]) == 8


def test_the_default_site_of_a_model_without_blocks_is_shared_too(tmp_path):
    model, pool, _, gkw = _case("cnn")
    act = ss.probes.Activations(pool, every=1, batch=4, forward_fn=xy_forward)  # the head's input, found by running
    shared, n = _measure(tmp_path, "shared", model, [act, ss.probes.Gradients(pool, every=1, batch=4, **gkw)])
    alone, _ = _measure(tmp_path, "act", model, [ss.probes.Activations(pool, every=1, batch=4, forward_fn=xy_forward)])
    assert n == 3 and ("activations", "head:input") in shared
    np.testing.assert_allclose(shared[("activations", "head:input")], alone[("activations", "head:input")], rtol=1e-10)


@pytest.mark.parametrize("change, why", [
    (dict(grad=dict(pool="other")), "different pools"),
    (dict(grad=dict(samples=6)), "different pools"),  # 6 rows: not a whole number of batches of 4
    (dict(grad=dict(batch=3)), "batch sizes differ"),
    (dict(grad=dict(method="func")), "method 'func'"),
    (dict(act=dict(forward_fn=lambda m, b: m(b))), "forward_fn differ"),
])
def test_when_sharing_does_not_apply_each_runs_its_own_pass(tmp_path, caplog, change, why):
    model, pool, _, _ = _case("gpt")
    other = torch.randint(0, 64, (12, 16), generator=torch.Generator().manual_seed(9))
    akw, gkw = dict(every=1, batch=4), dict(every=1, batch=4)
    akw.update(change.get("act", {}))
    gkw.update({k: other if v == "other" else v for k, v in change.get("grad", {}).items()})
    gpool = gkw.pop("pool", pool)
    with caplog.at_level(logging.DEBUG, logger="specscope"):
        got, n = _measure(tmp_path, "r", model, [ss.probes.Activations(pool, **akw), ss.probes.Gradients(gpool, **gkw)])
    assert why in caplog.text and "separate passes" in caplog.text
    alone_a, n_a = _measure(tmp_path, "a", model, [ss.probes.Activations(pool, **akw)])
    alone_g, n_g = _measure(tmp_path, "g", model, [ss.probes.Gradients(gpool, **gkw)])
    assert n == n_a + n_g
    _assert_same(got, {**alone_a, **alone_g})


def test_a_matrix_the_hooked_path_does_not_take_falls_back_once_and_remembers(tmp_path, caplog):
    model, pool, akw, _ = _case("cnn")
    grad = ss.probes.Gradients(pool, "conv", -1, every=1, batch=4, forward_fn=xy_forward, loss_fn=ce_loss)
    act = ss.probes.Activations(pool, every=1, batch=4, **akw)
    with caplog.at_level(logging.DEBUG, logger="specscope"):
        got, _ = _measure(tmp_path, "r", model, [act, grad])
    assert "not the weight of a linear layer" in caplog.text
    assert not grad.shares_pass(act)  # remembered: later steps do not try again
    alone_g, _ = _measure(tmp_path, "g", model, [ss.probes.Gradients(pool, "conv", -1, every=1, batch=4,
                                                                     forward_fn=xy_forward, loss_fn=ce_loss)])
    np.testing.assert_allclose(got[("gradients", "features.2")], alone_g[("gradients", "features.2")], rtol=1e-10)


def test_a_failing_shared_pass_records_nan_for_both_and_training_goes_on(tmp_path, caplog):
    model, pool, _, _ = _case("gpt")
    calls = {"n": 0}

    def flaky(m, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in the forward")
        return m(batch)

    probes = [ss.probes.Activations(pool, every=1, batch=4, forward_fn=flaky),
              ss.probes.Gradients(pool, every=1, batch=4, forward_fn=flaky)]
    with caplog.at_level(logging.WARNING), ss.Monitor(model, tmp_path / "r", probes=probes) as mon:
        for step in range(3):
            mon.step(step, loss=1.0)
    run = ss.open_run(tmp_path / "r")
    m = run.metrics()
    err = m[m["metric"] == "probe_error"]
    assert set(err["probe"]) == {"activations", "gradients"} and set(err["step"]) == {0}
    assert err["value"].isna().all() and err["status"].str.contains("boom in the forward").all()
    assert set(m[m["metric"] == "rankme"]["step"]) == {1, 2}  # later steps measured
    sc = run.scalars()
    assert {"probe_failed/activations", "probe_failed/gradients"} <= set(sc.columns)


def test_the_shared_pass_keeps_modes_rng_and_grads(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32, dropout=0.1))
    model.train()
    model.blocks[0].eval()
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    pool = torch.randint(0, 64, (8, 16))
    probes = [ss.probes.Activations(pool, every=1, batch=4), ss.probes.Gradients(pool, every=1, batch=4)]
    count = Forwards(model)
    with ss.Monitor(model, tmp_path / "r", probes=probes) as mon:
        state = torch.get_rng_state()
        mon.step(0)
        assert torch.equal(state, torch.get_rng_state()) and count.n == 2
    assert model.training and not model.blocks[0].training and model.blocks[1].training
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert torch.is_grad_enabled()


def test_measure_level_shared_pass_equals_the_separate_functions():
    model, pool, _, _ = _case("gpt", 10)
    reqs = [ss.measure.ActivationRequest(layers=(0, 1)), ss.measure.ActivationRequest(modules=("blocks.1.mlp",),
                                                                                       normalize="none")]
    covs, gram, ref = ss.measure.activations_and_gradient(model, pool, reqs, 10, matrix="q", layer=0, batch=5, chunk=3)
    want = [ss.measure.activation_covariances(model, pool, (0, 1), batch=5),
            ss.measure.activation_covariances(model, pool, modules=("blocks.1.mlp",), normalize="none", batch=5)]
    for got, exp in zip(covs, want):
        assert list(got) == list(exp)
        for site in exp:
            assert torch.equal(got[site].compute(), exp[site].compute())
    g, r = ss.measure.gradient_gram(model, pool, "q", 0, batch=5, chunk=3)
    assert ref.name == r.name and torch.equal(gram, g)
    with pytest.raises(ss.measure.NotShared, match="whole number of batches"):
        ss.measure.activations_and_gradient(model, pool, reqs, 7, batch=5)


def test_shared_rows():
    rows = ss.measure.shared_rows
    x = torch.arange(24).reshape(12, 2)
    assert rows(x, x, 4) == 12 and rows(x, x.clone(), 4) == 12 and rows(x, x[:8], 4) == 8
    assert rows(x, x[:6], 4) is None and rows(x, x + 1, 4) is None and rows(x[:8], x, 4) is None
    assert rows(x, x.double(), 4) is None
    pair = (x, torch.ones(12))
    assert rows(pair, (x[:4], torch.ones(4)), 4) == 4 and rows(pair, (x, (torch.ones(12),)), 4) is None
    assert rows({"a": x}, {"a": x.clone()}, 4) == 12 and rows({"a": x}, {"b": x}, 4) is None


def test_share_groups_order_and_a_failing_shares_pass():
    class Lead(Probe):
        needs = frozenset({"pool_forward"})

        def shares_pass(self, other):
            if other.name == "bad":
                raise RuntimeError("no")
            return other.name.startswith("mate")

        def measure(self, ctx):
            return Measurement()

    class Other(Lead):
        def shares_pass(self, other):
            return False

    mate, bad, lead, alone = Other(name="mate"), Other(name="bad"), Lead(name="lead"), Probe(name="plain")
    mate2 = Other(name="mate2")
    mate2.needs = frozenset({"parameters"})  # no need in common with the lead: alone
    groups = share_groups([mate, bad, alone, lead, mate2])
    assert [[p.name for p in g] for g in groups] == [["lead", "mate"], ["bad"], ["plain"], ["mate2"]]
