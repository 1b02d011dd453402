import math
import re
from pathlib import Path

import torch

import specscope as ss
from specscope.probes import Measurement, Probe
from specscope.train import GPT, GPTConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"<!-- readme-example: start -->\s*```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    run = ss.open_run(tmp_path / "runs" / "readme")
    m = run.metrics()
    assert set(m["step"]) == {0, 25, 50, 75}
    assert set(m["kind"]) == {"other"} and (m[m["name"] == "0"]["status"] == "ok").all()
    short = m[(m["name"] == "2") & (m["metric"] == "alpha_head")]  # 8 x 64: rank 8 < head window [1,10]
    assert short["value"].isna().all() and short["status"].str.contains("outside spectrum").all()
    assert len(run.scalars()) == 100


def _train(model, steps, monitor=None, seed=0):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = torch.randint(0, model.cfg.vocab_size, (4, model.cfg.seq_len), generator=g)
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.rand(1)  # global RNG consumed by the loop itself
        if monitor is not None:
            monitor.step(step, loss=loss.item(), tokens=(step + 1) * x.numel())
    return model


TINY = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32, dropout=0.1)


def test_measuring_does_not_perturb_training(tmp_path):
    torch.manual_seed(0)
    ref = _train(GPT(TINY), 12)
    torch.manual_seed(0)
    model = GPT(TINY)
    with ss.Monitor(model, tmp_path / "r", probes=[ss.probes.Weights(every=3)]) as mon:
        _train(model, 12, mon)
    for (n, a), (_, b) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n  # bitwise: no grads, no RNG use, dropout mode kept
    assert set(ss.open_run(tmp_path / "r").metrics()["step"]) == {0, 3, 6, 9}


def test_modes_and_rng_restored(tmp_path):
    model = GPT(TINY)
    model.train()
    model.blocks[0].eval()

    class Meddler(Probe):
        name = "meddler"

        def measure(self, ctx):
            ctx.model.eval()
            torch.rand(100)
            return Measurement()

    mon = ss.Monitor(model, tmp_path / "r", probes=[Meddler(every=1)])
    state = torch.get_rng_state()
    mon.step(0)
    assert torch.equal(state, torch.get_rng_state())
    assert model.training and not model.blocks[0].training and model.blocks[1].training
    mon.close()


def test_failing_probe_records_nan_and_training_goes_on(tmp_path):
    class Broken(Probe):
        name = "broken"

        def measure(self, ctx):
            raise RuntimeError("boom")

    model = GPT(TINY)
    with ss.Monitor(model, tmp_path / "r", probes=[Broken(every=2), ss.probes.Weights(every=2)]) as mon:
        _train(model, 5, mon)
    m = ss.open_run(tmp_path / "r").metrics()
    err = m[m["probe"] == "broken"]
    assert len(err) == 3 and err["value"].isna().all() and err["status"].str.contains("boom").all()
    assert (m[m["probe"] == "weights"]["status"] == "ok").all()


def test_weights_turning_nan_mid_run_keep_training(tmp_path):
    model = GPT(TINY)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with ss.Monitor(model, tmp_path / "r", probes=[ss.probes.Weights(every=1)]) as mon:
        for step in range(6):
            x = torch.randint(0, 64, (2, 16))
            _, loss = model(x, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 3:
                with torch.no_grad():
                    model.blocks[1].attn.q.weight[0, 0] = float("nan")
            mon.step(step, loss=loss.item())
    run = ss.open_run(tmp_path / "r")
    m = run.metrics(metric="stable_rank")
    q1 = m[(m["layer"] == 1) & (m["kind"] == "q")].set_index("step")
    assert q1.loc[[0, 1, 2], "value"].notna().all()
    assert q1.loc[[3, 4, 5], "value"].isna().all() and (q1.loc[[3, 4, 5], "status"] == "non-finite entries").all()
    others = m[~((m["layer"] == 1) & (m["kind"] == "q"))]
    assert others[others["step"] < 4]["value"].notna().all()  # NaN spreads only once training uses it
    sc = run.scalars()
    assert len(sc) == 6 and math.isnan(sc["loss"].iloc[-1])
    assert run.spectra(step=5, layer=1, kind="q")["status"].iloc[0] == "non-finite entries"


def test_catalog_of_reference_gpt():
    model = GPT(GPTConfig(vocab_size=50, seq_len=8, n_layer=3, n_head=2, d_model=16, tied=True))
    cat = ss.catalog(model)
    by = {(r.layer, r.kind): r for r in cat}
    for layer in range(3):
        for kind in ("q", "k", "v", "o"):
            assert by[(layer, kind)].shape == (16, 16)
        assert by[(layer, "mlp_in")].shape == (64, 16)
        assert by[(layer, "mlp_out")].shape == (16, 64)
    assert by[(-1, "embed")].shape == (50, 16)
    assert not any(r.kind == "lm_head" for r in cat)  # tied: listed once, as the embedding
    untied = ss.catalog(GPT(GPTConfig(vocab_size=50, seq_len=8, n_layer=1, n_head=2, d_model=16, tied=False)))
    assert sum(r.kind == "lm_head" for r in untied) == 1
    assert torch.equal(by[(2, "q")].read(), model.blocks[2].attn.q.weight)


def test_catalog_generic_fallback():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(5, 7)
            self.stack = torch.nn.ModuleList([torch.nn.Linear(7, 7) for _ in range(2)])
            self.conv = torch.nn.Conv2d(1, 2, 3)

    cat = ss.catalog(Odd())
    assert [(r.name, r.layer, r.kind) for r in cat] == [("enc", 0, "other"), ("stack.0", 1, "other"),
                                                        ("stack.1", 2, "other"), ("conv", 3, "conv")]
    assert cat.skipped == {"1-D tensors": 4}  # the biases


def test_probe_that_measures_nothing_or_fails_to_observe_says_so(tmp_path, caplog):
    class Broken(ss.probes.Probe):
        name = "broken"
        observes_every_step = True

        def observe(self, ctx):
            raise RuntimeError("shape mismatch")

        def measure(self, ctx):
            return ss.probes.base.Measurement()

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with caplog.at_level("WARNING"), ss.Monitor(model, tmp_path / "r", probes=[
            ss.probes.Weights(every=2, kinds=["q", "k"]), Broken(every=0)]) as mon:
        for step in range(4):
            mon.step(step, loss=1.0)
    run = ss.open_run(tmp_path / "r")
    w = run.metrics(probe="weights")
    assert list(w["step"]) == [0, 2] and w["value"].isna().all()
    assert w["status"].str.contains(r"no cataloged matrix of kinds \['k', 'q'\] in this model").all()
    b = run.metrics(probe="broken")
    assert list(b["metric"]) == ["probe_error"] and b["status"].iloc[0] == "observe failed: RuntimeError: shape mismatch"
    assert run.scalars()["probe_failed/broken"].tolist() == [1.0] * 4
    assert caplog.text.count("failed to observe") == 1 and caplog.text.count("no cataloged matrix") == 1


def test_a_probe_returning_no_measurement_is_a_probe_error_not_a_crash(tmp_path):
    """A custom probe whose measure() returns None: a probe_error row saying so, and the loop goes on."""
    from torch import nn as _nn

    import specscope as ss
    from specscope.probes import Probe

    class Bad(Probe):
        name = "bad"

        def measure(self, ctx):
            return None

    with ss.Monitor(_nn.Linear(4, 4), tmp_path / "run", probes=[Bad(every=1)]) as mon:
        mon.step(0, loss=1.0)
        mon.step(1, loss=0.5)
    m = ss.open_run(tmp_path / "run").metrics()
    rows = m[m["metric"] == "probe_error"]
    assert sorted(rows["step"]) == [0, 1]
    assert rows["status"].str.contains("returned NoneType, not a Measurement").all()
