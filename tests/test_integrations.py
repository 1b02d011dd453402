"""The HF Trainer and Lightning callbacks in real (tiny, offline) training runs."""
import copy
import dataclasses

import numpy as np
import pytest
import torch

import specscope as ss


def test_hf_trainer_callback(tmp_path):
    transformers = pytest.importorskip("transformers")
    from specscope.integrations.hf import SpectralCallback

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_head=2, n_layer=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    data = [{"input_ids": (ids := torch.randint(0, 50, (16,))), "labels": ids} for _ in range(32)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, logging_steps=1, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True, include_num_input_tokens_seen=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[SpectralCallback(every=2)])
    trainer.train()
    run = ss.open_run(tmp_path / "out" / "specscope")
    m = run.metrics(metric="stable_rank")
    assert sorted(m["step"].unique()) == [0, 2, 4, 6]
    assert {"q", "k", "v", "o", "mlp_in", "mlp_out"} <= set(m["kind"])  # fused c_attn split
    sc = run.scalars()
    assert sc["loss"].notna().sum() == 6 and "learning_rate" in sc
    assert run.metrics(metric="stable_rank").query("step == 6")["tokens"].iloc[0] == 6 * 8 * 16


def test_lightning_callback(tmp_path):
    L = pytest.importorskip("lightning")
    from specscope.integrations.lightning import SpectralCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_mse", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    trainer = L.Trainer(max_steps=6, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), callbacks=[SpectralCallback(every=3)])
    trainer.fit(Module(), loader)
    run = ss.open_run(tmp_path / "specscope")
    assert sorted(run.metrics(metric="stable_rank")["step"].unique()) == [0, 3, 6]
    sc = run.scalars()
    assert sc["step"].tolist() == [0, 1, 2, 3, 4, 5, 6] and sc["loss"].notna().sum() == 6 and "train_mse" in sc


# The same probes under a framework and under a plain loop -----------------------------------

STEPS, ACCUM, BATCH = 6, 2, 4  # 6 optimizer steps of 2 micro-batches of 4


def _fingerprint(model):
    return tuple(float(p.detach().double().sum()) for p in model.parameters())


class _Spy(ss.probes.Probe):
    """Every-step probe, never measured: which steps the monitor was called at, and on which parameters."""

    name = "spy"
    observes_every_step = True

    def __init__(self):
        super().__init__(every=0)
        self.seen = []

    def observe(self, ctx):
        self.seen.append((ctx.step, _fingerprint(ctx.model)))

    def measure(self, ctx):
        return ss.probes.Measurement()


def _probes():
    return [ss.probes.Weights(every=2), ss.probes.Trajectory(window=4, every=2), _Spy()]


def _after_each_step(opt, model):
    """The parameters' fingerprints after each optimizer step (a post-step hook)."""
    after = []
    opt.register_step_post_hook(lambda *_: after.append(_fingerprint(model)))
    return after


def _plain_loop(model, micro_batches, loss_fn, opt, run_dir, probes):
    """The reference: ``mon.step(0)`` on the initial model, then ``mon.step(s)`` after optimizer step ``s``."""
    with ss.Monitor(model, run_dir, probes=probes) as mon:
        mon.step(0)
        for s in range(1, STEPS + 1):
            for batch in micro_batches[(s - 1) * ACCUM:s * ACCUM]:
                (loss_fn(model, batch) / ACCUM).backward()
            opt.step()
            opt.zero_grad()
            mon.step(s)


def _assert_like_plain_loop(run_dir, plain_dir, probes, initial, after, compare_values=True):
    run, plain = ss.open_run(run_dir), ss.open_run(plain_dir)
    pairs = lambda r: set(r.metrics()[["probe", "step"]].itertuples(index=False, name=None))
    assert pairs(run) == pairs(plain) == {(p, s) for p in ("weights", "trajectory") for s in (0, 2, 4, 6)}
    updates = lambda r: dict(r.metrics(probe="trajectory", metric="window_updates")[["step", "value"]].values.tolist())
    assert updates(run) == updates(plain) == {2: 2.0, 4: 4.0, 6: 4.0}  # the 0->1 update is in the window
    kstar = run.metrics(probe="trajectory", metric="kstar")
    assert kstar["step"].tolist() == [0, 2, 4, 6] and np.isnan(kstar["value"].iloc[0])  # no update at step 0
    spec = run.spectra(probe="trajectory").set_index("step")["values"]
    for step, k in kstar.query("step > 0")[["step", "value"]].itertuples(index=False):
        sv = np.asarray(spec[step])
        assert k == np.argmax(sv[:-1] / sv[1:]) + 1  # where the window spectrum has its largest consecutive ratio
    # Called once per optimizer step (not per micro-batch), each time on the parameters after that step.
    assert len(after) == STEPS and len(set(after)) == STEPS
    assert probes[-1].seen == [(0, initial)] + list(enumerate(after, start=1))
    if compare_values:  # same model, data order and optimizer: the same trajectory spectra
        a, b = run.spectra(probe="trajectory"), plain.spectra(probe="trajectory")
        assert a["step"].tolist() == b["step"].tolist() == [2, 4, 6]
        for x, y in zip(a["values"], b["values"]):
            np.testing.assert_allclose(x, y, rtol=1e-4)


def test_hf_callback_runs_probes_like_a_plain_loop(tmp_path):
    transformers = pytest.importorskip("transformers")
    from specscope.integrations.hf import SpectralCallback

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_head=2, n_layer=2, vocab_size=50, n_positions=16,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    plain_model = copy.deepcopy(model)
    ids = torch.randint(0, 50, (STEPS * ACCUM * BATCH, 16))
    labels = ids.clone()
    labels[:, 0] = -100  # the shifted loss never sees position 0: the Trainer's token count is then exact either way
    data = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    sequential = "train_sampling_strategy" in fields  # older transformers shuffle: compare steps, not values
    extra = {"train_sampling_strategy": "sequential"} if sequential else {}
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=STEPS,
                                          per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUM,
                                          max_grad_norm=0.0, logging_steps=1, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True, **extra)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    after = _after_each_step(opt, model)
    initial = _fingerprint(model)
    probes = _probes()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[SpectralCallback(probes=probes)],
                                   optimizers=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)))
    trainer.train()
    assert trainer.state.global_step == STEPS

    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.1)
    micro = [transformers.default_data_collator(data[i:i + BATCH]) for i in range(0, len(data), BATCH)]
    _plain_loop(plain_model, micro, lambda m, b: m(**b).loss, plain_opt, tmp_path / "plain", _probes())
    _assert_like_plain_loop(tmp_path / "out" / "specscope", tmp_path / "plain", probes, initial, after, sequential)
    sc = ss.open_run(tmp_path / "out" / "specscope").scalars(wide=False)
    assert sc.query("name == 'loss'")["step"].tolist() == list(range(1, STEPS + 1))  # once per step, from on_log


def test_lightning_callback_runs_probes_like_a_plain_loop(tmp_path):
    L = pytest.importorskip("lightning")
    from specscope.integrations.lightning import SpectralCallback

    def block():  # cataloged as blocks.<i>.mlp.fc / .proj: mlp_in / mlp_out of block i
        return torch.nn.ModuleDict({"mlp": torch.nn.ModuleDict({"fc": torch.nn.Linear(16, 32),
                                                                 "proj": torch.nn.Linear(32, 16)})})

    class ResMLP(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([block() for _ in range(2)])
            self.head = torch.nn.Linear(16, 1)

        def forward(self, x):
            for b in self.blocks:
                x = x + b["mlp"]["proj"](torch.relu(b["mlp"]["fc"](x)))
            return self.head(x)

        def training_step(self, batch, batch_idx):
            return mse(self, batch)

        def configure_optimizers(self):
            self.opt = torch.optim.SGD(self.parameters(), lr=0.05)
            self.after = _after_each_step(self.opt, self)
            return self.opt

    def mse(model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    torch.manual_seed(0)
    module = ResMLP()
    plain_model = copy.deepcopy(module)
    initial = _fingerprint(module)
    ds = torch.utils.data.TensorDataset(torch.randn(STEPS * ACCUM * BATCH, 16), torch.randn(STEPS * ACCUM * BATCH, 1))
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=False)
    probes = _probes()
    trainer = L.Trainer(max_steps=STEPS, accumulate_grad_batches=ACCUM, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), callbacks=[SpectralCallback(probes=probes)])
    trainer.fit(module, loader)
    assert trainer.global_step == STEPS

    _plain_loop(plain_model, list(loader), mse, torch.optim.SGD(plain_model.parameters(), lr=0.05), tmp_path / "plain",
                _probes())
    _assert_like_plain_loop(tmp_path / "specscope", tmp_path / "plain", probes, initial, module.after)
