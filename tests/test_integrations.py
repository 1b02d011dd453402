"""The HF Trainer and Lightning callbacks in real (tiny, offline) training runs."""
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
