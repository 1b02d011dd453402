"""Exporters: a small run's numbers in TensorBoard, W&B and MLflow, live (``Monitor(log_to=...)``) and after the fact
(``export_run`` / ``specscope export``), each read back with the backend's own reader and compared with the run store
(the reference), tag by tag and step by step; the tags themselves against hand-written known answers."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import specscope as ss
from specscope.errors import ConfigError
from specscope.export.common import clean, points, tag, where
from specscope.probes import Probe
from specscope.store.rows import Measurement

HAVE = {b: importlib.util.find_spec(m) is not None for b, m in
        (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow"))}
STEPS = 5


def needs(backend: str):
    return pytest.mark.skipif(not HAVE[backend], reason=f"the {backend} package is not installed")


class Known(Probe):
    """Rows with known values at each step ``s``: two matrices of one kind in one layer (told apart by name), a part,
    a metric name with brackets, a matrix outside the blocks, a NaN (not exported) and a spectrum."""
    name = "known"

    def measure(self, ctx):
        s = ctx.step
        m = Measurement()
        m.add_metric(0, "other", "a.w", "value", 1.0 * s)
        m.add_metric(0, "other", "b.w", "value", 2.0 * s + 0.5)
        m.add_metric(1, "q", "blocks.1.q", "stability[1]", 0.25 * s, part=2)
        m.add_metric(-1, "embed", "emb", "norm", 3.0)
        m.add_metric(-1, "embed", "emb", "gap", math.nan, "undefined")
        m.add_spectrum(1, "q", "blocks.1.q", "sv", [3.0 * (s + 1), 2.0 * (s + 1), 1.0 * (s + 1)], part=2)
        return m


def known_scalars(step: int) -> dict[str, float]:
    return {"specscope/known/other/value/layer_0/a.w": 1.0 * step, "specscope/known/other/value/layer_0/b.w": 2.0 * step + 0.5,
            "specscope/known/q/stability_1/layer_1_part_2": 0.25 * step, "specscope/known/embed/norm": 3.0}


def expected(run) -> tuple[dict, dict, dict]:
    """From the run store, built by hand: {(tag, step): value} of the metrics, {(tag, step): spectrum} of the
    histograms, {(tag, step): value} of the training scalars."""
    metrics = {}
    for r in run.metrics(probe="weights").itertuples():
        if np.isfinite(r.value):
            metric = r.metric.replace("[", "_").replace("]", "")  # ratio[1] -> ratio_1
            metrics[(f"specscope/weights/{r.kind}/{metric}/layer_{r.layer}", r.step)] = r.value
    steps = sorted(run.metrics(probe="known")["step"].unique())
    for s in steps:
        metrics.update({(t, s): v for t, v in known_scalars(s).items()})
    hists = {(f"specscope/weights/{r.kind}/sv/layer_{r.layer}", r.step): r.values for r in run.spectra(probe="weights").itertuples()}
    hists.update({("specscope/known/q/sv/layer_1_part_2", s): np.array([3.0, 2.0, 1.0]) * (s + 1) for s in steps})
    scalars = {(f"specscope/scalars/{r.name}", r.step): r.value for r in run.scalars(wide=False).itertuples()}
    return metrics, hists, scalars


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny MLP trained 5 steps with Weights and Known every 2 steps, exported live to every installed backend."""
    tmp = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp), "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                     "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
            mp.setenv(k, v)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(32, 8), torch.randn(32, 4)
        live = [b for b in ("tensorboard", "mlflow", "wandb") if HAVE[b]]
        with ss.Monitor(model, tmp / "r", probes=[ss.probes.Weights(every=2), Known(every=2)], log_to=live) as mon:
            mon.step(0)
            for step in range(1, STEPS):
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step(step, loss=loss.item())
        yield ss.open_run(tmp / "r"), tmp, mp


def test_tags_known_answers():
    assert clean("stability[1]") == "stability_1" and clean("a:b c") == "a_b c" and clean("") == "_" and clean("..") == "_"
    assert where(3) == "layer_3" and where(3, 1) == "layer_3_part_1" and where(-1) == "" and where(-1, 2) == "part_2"
    assert tag("weights", "q", "alpha_mle", 3) == "specscope/weights/q/alpha_mle/layer_3"
    assert tag("weights", "embed", "stable_rank", -1) == "specscope/weights/embed/stable_rank"
    m = Known().measure(type("Ctx", (), {"step": 2})())
    scalars, hists = points("known", m)
    assert scalars == known_scalars(2)  # the NaN left out; a.w and b.w told apart by name; q alone keeps no name
    assert list(hists) == ["specscope/known/q/sv/layer_1_part_2"] and hists["specscope/known/q/sv/layer_1_part_2"].tolist() == [9, 6, 3]


def _tensorboard(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    scalars = {(t, e.step): e.value for t in ea.Tags()["scalars"] for e in ea.Scalars(t)}
    hists = {(t, e.step): e.histogram_value for t in ea.Tags()["histograms"] for e in ea.Histograms(t)}
    return scalars, hists


def _same(got: dict, want: dict, rel: float = 1e-6) -> None:
    assert set(got) == set(want), (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=rel, abs=1e-12), k


def _check_tensorboard(log_dir: Path, run, with_scalars: bool) -> None:
    metrics, hists, scalars = expected(run)
    got, got_h = _tensorboard(log_dir)
    want = {**metrics, **(scalars if with_scalars else {})}
    _same({k: v for k, v in got.items() if k[0].startswith("specscope/")}, want)  # float32 events
    assert set(got_h) == set(hists)
    for k, sv in hists.items():
        h = got_h[k]
        assert (h.num, h.min, h.max) == (len(sv), pytest.approx(sv.min()), pytest.approx(sv.max()))
        assert h.sum == pytest.approx(sv.sum()) and h.sum_squares == pytest.approx((sv ** 2).sum())


@needs("tensorboard")
def test_tensorboard_live(run):
    r, _, _ = run
    _check_tensorboard(r.dir / "tensorboard", r, with_scalars=False)  # the user's own scalars are not re-exported live


@needs("tensorboard")
def test_tensorboard_after_the_fact_and_cli(run, capsys):
    from specscope.cli.main import main

    r, tmp, _ = run
    got = ss.export.export_run(r.dir, "tensorboard", tmp / "tb")
    metrics, hists, scalars = expected(r)
    assert got == {"to": "tensorboard", "out": str(tmp / "tb"), "metrics": len(metrics), "histograms": len(hists),
                   "scalars": len(scalars)}
    _check_tensorboard(tmp / "tb", r, with_scalars=True)
    assert main(["export", str(r.dir), "--to", "tensorboard", "--out", str(tmp / "tb_cli")]) == 0
    _check_tensorboard(tmp / "tb_cli", r, with_scalars=True)
    assert f"to tensorboard: {tmp / 'tb_cli'}" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys):
    from specscope.cli.main import main

    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--to", "tensorboard"]) == 2
    assert main(["export", str(tmp_path / "nope"), "--to", "tensorboard"]) == 2
    assert main(["export", str(tmp_path / "empty"), "--to", "csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not a specscope run" in err[0] and "no such file" in err[1] and "invalid choice" in err[2]
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "RUN/<backend>" in out


def _mlflow(uri: str, run_name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("specscope").experiment_id],
                              filter_string=f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    return {(k, m.step): m.value for k in runs[0].data.metrics for m in client.get_metric_history(run_id, k)}


@needs("mlflow")
def test_mlflow_live_and_after_the_fact(run):
    r, tmp, _ = run
    metrics, _, scalars = expected(r)
    _same(_mlflow((r.dir / "mlflow").as_uri(), r.run_id), metrics, rel=1e-12)  # no histograms in MLflow
    got = ss.export.export_run(r.dir, "mlflow", tmp / "ml")
    assert got["histograms"] == 0 and got["metrics"] == len(metrics)
    _same(_mlflow((tmp / "ml").as_uri(), r.run_id), {**metrics, **scalars}, rel=1e-12)


def _wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of a W&B offline run, read from its transaction log (``run-*.wandb``: a ``:W&B`` header, then
    LevelDB-log records of ``wandb.proto`` ``Record``s in 32 KiB blocks), with W&B's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, buf, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = (buf if kind in (3, 4) else b"") + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def _check_wandb(run_dir: Path, r, with_scalars: bool) -> None:
    metrics, hists, scalars = expected(r)
    got, got_h = {}, {}
    for row in _wandb_history(run_dir):
        step = row.pop("specscope/step")
        for k, v in row.items():
            if k.endswith("/_type"):
                base = k[:-len("/_type")]
                got_h[(base, step)] = (sum(row[f"{base}/values"]), row[f"{base}/bins"][0], row[f"{base}/bins"][-1])
            elif k.startswith("specscope/") and not k.endswith(("/values", "/bins")):
                got[(k, step)] = v
    _same(got, {**metrics, **(scalars if with_scalars else {})}, rel=1e-12)
    assert set(got_h) == set(hists)
    for k, sv in hists.items():
        assert got_h[k] == (len(sv), pytest.approx(sv.min()), pytest.approx(sv.max()))


@needs("wandb")
def test_wandb_live_and_after_the_fact(run):
    r, tmp, _ = run
    (live,) = (tmp / "wandb").glob("offline-run-*")
    _check_wandb(live, r, with_scalars=False)
    ss.export.export_run(r.dir, "wandb", tmp / "wb")
    (after,) = (tmp / "wb" / "wandb").glob("offline-run-*")
    _check_wandb(after, r, with_scalars=True)


def test_failing_sink_never_breaks_training(tmp_path, caplog):
    class Broken:
        calls = 0

        def write(self, step, probe, measurement):
            Broken.calls += 1
            raise OSError("disk full")

        def flush(self):
            pass

        def close(self):
            pass

    model = torch.nn.Linear(4, 4)
    with caplog.at_level("WARNING"), ss.Monitor(model, tmp_path / "r", probes=[ss.probes.Weights(every=1)],
                                                 log_to=[Broken()]) as mon:
        for step in range(3):
            mon.step(step)
    assert Broken.calls == 3 and sorted(ss.open_run(tmp_path / "r").metrics()["step"].unique()) == [0, 1, 2]
    assert sum("disk full" in r.message for r in caplog.records) == 1


def test_bad_log_to_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown backend 'tensorbored'"):
        ss.Monitor(torch.nn.Linear(4, 4), tmp_path / "a", log_to=["tensorbored"])
    with pytest.raises(ConfigError, match="no backend takes a int"):
        ss.Monitor(torch.nn.Linear(4, 4), tmp_path / "b", log_to=[3])


@needs("tensorboard")
def test_user_summary_writer_is_flushed_not_closed(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    with ss.Monitor(torch.nn.Linear(4, 4), tmp_path / "r", probes=[ss.probes.Weights(every=1)], log_to=[writer]) as mon:
        mon.step(7)
    writer.add_scalar("mine", 1.0, 8)  # still open
    writer.close()
    got, _ = _tensorboard(tmp_path / "tb")
    assert ("mine", 8) in got and ("specscope/weights/other/stable_rank/layer_0", 7) in got


@needs("tensorboard")
def test_hf_trainer_report_to_tensorboard(tmp_path):
    transformers = pytest.importorskip("transformers")
    from specscope.integrations.hf import SpectralCallback

    torch.manual_seed(0)  # a tiny GPT-2 from a config, 4 optimizer steps, the Trainer logging to TensorBoard
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_head=2, n_layer=2, vocab_size=50, n_positions=16))
    sequences = torch.randint(0, 50, (16, 16))
    settings = {"output_dir": str(tmp_path / "out"), "max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 1,
                "report_to": ["tensorboard"], "save_strategy": "no", "use_cpu": True, "disable_tqdm": True}
    transformers.Trainer(model=gpt2, args=transformers.TrainingArguments(**settings),
                         train_dataset=[{"input_ids": x, "labels": x} for x in sequences],
                         callbacks=[SpectralCallback(every=2)]).train()
    (log_dir,) = (tmp_path / "out" / "runs").iterdir()  # the Trainer's own TensorBoard directory
    got, _ = _tensorboard(log_dir)
    assert {s for t, s in got if t == "train/loss"} == {1, 2, 3, 4}  # the Trainer's own scalars
    m = ss.open_run(tmp_path / "out" / "specscope").metrics(metric="stable_rank")
    want = {(f"specscope/weights/{r.kind}/stable_rank/layer_{r.layer}" if r.layer >= 0 else
             f"specscope/weights/{r.kind}/stable_rank", r.step): r.value for r in m.itertuples()}
    assert {k[1] for k in want} == {0, 2, 4} and any("/q/" in k[0] for k in want)
    _same({k: v for k, v in got.items() if k[0].startswith("specscope/") and "/stable_rank" in k[0]}, want)


@needs("tensorboard")
def test_lightning_tensorboard_logger(tmp_path):
    L = pytest.importorskip("lightning")
    from specscope.integrations.lightning import SpectralCallback

    class Regression(L.LightningModule):  # two matrices (layers 0 and 1), logging its loss to the trainer's logger
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.log("train_mse", loss := ((self.net(x) - y) ** 2).mean())
            return loss

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randn(32, 1)), batch_size=4)
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path / "tb"), name="", version=0)
    trainer = L.Trainer(max_steps=4, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), callbacks=[SpectralCallback(every=2)])
    trainer.fit(Regression(), loader)
    got, _ = _tensorboard(Path(logger.log_dir))
    m = ss.open_run(tmp_path / "specscope").metrics(metric="stable_rank")
    want = {(f"specscope/weights/{r.kind}/stable_rank/layer_{r.layer}", r.step): r.value for r in m.itertuples()}
    assert {k[1] for k in want} == {0, 2, 4} and any(t == "train_mse" for t, _ in got)
    _same({k: v for k, v in got.items() if "/stable_rank" in k[0]}, want)


DIST_SCRIPT = '''
import sys, torch, torch.distributed as dist
import specscope as ss
from pathlib import Path
out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()

class Tally:
    def write(self, step, probe, measurement):
        with open(out / f"tally-rank{rank}.txt", "a") as f:
            f.write(f"{step} {probe}\\n")
    def flush(self):
        pass
    def close(self):
        pass

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
with ss.Monitor(model, out / "r", probes=[ss.probes.Weights(every=2)], log_to=["tensorboard", Tally()]) as mon:
    for step in range(4):
        mon.step(step, loss=1.0)
dist.destroy_process_group()
'''


@needs("tensorboard")
def test_only_rank_zero_exports(tmp_path):
    """Under torchrun (2 ranks, gloo): rank 0 exports each measurement once; rank 1 never opens its sinks."""
    (tmp_path / "job.py").write_text(DIST_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "job.py"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "tally-rank0.txt").read_text().split("\n")[:-1] == ["0 weights", "2 weights"]
    assert not (tmp_path / "tally-rank1.txt").exists()
    got, _ = _tensorboard(tmp_path / "r" / "tensorboard")
    assert {s for t, s in got if t == "specscope/weights/other/stable_rank/layer_0"} == {0, 2}


@needs("mlflow")
def test_mlflow_client_and_run_of_the_user(tmp_path, monkeypatch):
    """``("mlflow", {"client": ..., "run_id": ...})``, as the Lightning callback passes an MLFlowLogger: the metrics
    land in that run, which is left running (the user's)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((tmp_path / "ml").as_uri())
    mine = client.create_run(client.create_experiment("mine")).info.run_id
    with ss.Monitor(torch.nn.Linear(4, 4), tmp_path / "r", probes=[ss.probes.Weights(every=1)],
                    log_to=[("mlflow", {"client": client, "run_id": mine})]) as mon:
        mon.step(3)
    want = ss.open_run(tmp_path / "r").metrics(metric="stable_rank")["value"].iloc[0]
    (got,) = client.get_metric_history(mine, "specscope/weights/other/stable_rank/layer_0")
    assert (got.step, got.value) == (3, pytest.approx(want, rel=1e-12))
    assert client.get_run(mine).info.status == "RUNNING"
