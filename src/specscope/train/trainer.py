"""The reference trainer: a client of the monitor, exactly like a user's own training loop."""
from __future__ import annotations

import json
import math
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..errors import ConfigError
from ..monitor import Monitor
from ..probes import Activations, Gradients, Probe, Weights, make_pool
from ..progress import bar as progress_bar
from ..store.reader import is_run_dir, open_run
from .corpus import Corpus, load_corpus, sample_batch
from .model import GPT, GPTConfig
from .optim import DECAY_GROUPS, SCHEDULES, lr_at, make_optimizer

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The reference trainer's settings: ``steps`` (optimizer steps), ``micro_batch`` x ``grad_accum`` sequences per
    step, the learning-rate schedule (``lr``, ``warmup`` in steps, ``schedule``, ...), weight decay and its groups,
    the optimizer, the periods of evaluation, checkpoints and probes (in steps; 0: off), the probe pool (sequences),
    the seed, the device and the corpus (``max_corpus_bytes`` in bytes). Checked on construction: a bad value is a
    :class:`ConfigError`."""

    steps: int = 1000
    micro_batch: int = 16
    grad_accum: int = 1  # effective batch = micro_batch * grad_accum sequences
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    schedule: str = "cosine"  # "constant" | "cosine" | "wsd" | "step"
    decay_frac: float = 0.2  # wsd: the last fraction of steps decays linearly
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # step: fractions of the run where lr *= step_gamma
    step_gamma: float = 0.1
    weight_decay: float = 0.1
    decay_on: tuple[str, ...] = ("hidden", "embed", "head")  # parameter groups with weight decay (optim.DECAY_GROUPS)
    optimizer: str = "adamw"  # "adamw" | "muon" (Muon on hidden matrices, AdamW on the rest)
    muon_lr: float = 0.02
    spectral_warmup: str | None = None  # reference checkpoint: initialize block matrices with its spectra (SPEC 5.4)
    spectral_warmup_scale: float = 1.0
    stop_at: int | None = None  # stop after this step (the schedule still spans `steps`); resume later with resume=True
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    eval_batch: int = 16  # sequences per evaluation batch: the same windows whatever the training batch
    ckpt_every: int = 0  # 0: only the final checkpoint
    probe_every: int = 25
    probe_paired: bool = False  # the weight probe also measures at t + 1 whenever it measures at t (SoSD, SPEC 5.1)
    lens_every: int = 100  # activation and per-sample gradient spectra (0: off)
    pool_size: int = 64  # probe-pool sequences (from the corpus' probe split, seeded)
    grad_samples: int = 32  # sequences of the pool used for the gradient spectrum
    seed: int = 0
    device: str = "cpu"
    corpus: str = "stdlib"
    tokenizer: str = "byte"
    bpe_vocab: int = 2048
    max_corpus_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError(f"optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if not set(self.decay_on) <= set(DECAY_GROUPS):
            raise ConfigError(f"decay_on takes {DECAY_GROUPS}, got {list(self.decay_on)}")
        for name in ("steps", "micro_batch", "grad_accum", "eval_batches", "eval_batch", "pool_size", "grad_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup", "eval_every", "ckpt_every", "probe_every", "lens_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: off), got {getattr(self, name)!r}")
        for name in ("lr", "muon_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip", "min_lr_ratio"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")

    @property
    def effective_batch(self) -> int:
        """Sequences per optimizer step: ``micro_batch * grad_accum``."""
        return self.micro_batch * self.grad_accum


@torch.no_grad()
def evaluate(model: GPT, tokens: np.ndarray, cfg: TrainConfig, seq_len: int, device: torch.device) -> float:
    """Mean next-token cross-entropy (nats per token) over ``eval_batches`` x ``eval_batch`` fixed windows of
    ``tokens``: the same windows at every evaluation and in every run of a corpus, whatever its training batch
    (batch tiers are compared on one set). Returns a float; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    gen = np.random.default_rng(12345)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = sample_batch(tokens, cfg.eval_batch, seq_len, gen)
        _, loss = model(torch.from_numpy(x).long().to(device), torch.from_numpy(y).long().to(device))
        losses.append(float(loss))
    model.train(was_training)
    return float(np.mean(losses))


def save_checkpoint(model: GPT, run_dir: Path, step: int) -> Path:
    """Write the model's weights as ``RUN/checkpoints/step_<step, 7 digits>.safetensors`` (atomically), its
    :class:`GPTConfig` and step in the file's metadata: returns the file's path."""
    from safetensors.torch import save_model

    d = run_dir / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.safetensors"
    tmp = path.with_name("." + path.name + ".tmp")
    save_model(model, str(tmp), metadata={"step": str(step), "config": json.dumps(model.cfg.to_dict())})
    tmp.replace(path)
    return path


STATE_FILE = "state.pt"


def save_state(run_dir: Path, step: int, opt, data_gen: np.random.Generator, tokens: int, train_seconds: float) -> None:
    """What a resumed run needs beside the step's safetensors weights: optimizer, RNG states, counters.
    Only tensors, numbers, strings and containers: it loads with ``weights_only=True``."""
    import io

    from ..store.writer import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"step": step, "tokens": tokens, "train_seconds": train_seconds, "optimizer": opt.state_dict(),
                "data_rng": data_gen.bit_generator.state, "torch_rng": torch.get_rng_state()}, buf)
    atomic_write_bytes(run_dir / "checkpoints" / STATE_FILE, buf.getvalue())


def load_state(run_dir: Path, model: GPT, opt, data_gen: np.random.Generator) -> tuple[int, int, float]:
    """Restore a run saved by :func:`save_state` into ``model``, ``opt`` and ``data_gen`` (and torch's RNG): returns
    ``(step, tokens, train_seconds)``, the last saved step, tokens seen by then and training time in seconds."""
    from safetensors.torch import load_model

    state = torch.load(run_dir / "checkpoints" / STATE_FILE, map_location="cpu", weights_only=True)
    step = int(state["step"])
    load_model(model, str(run_dir / "checkpoints" / f"step_{step:07d}.safetensors"))
    opt.load_state_dict(state["optimizer"])
    data_gen.bit_generator.state = state["data_rng"]
    torch.set_rng_state(state["torch_rng"])
    return step, int(state["tokens"]), float(state["train_seconds"])


def default_probes(cfg: TrainConfig, corpus: Corpus, seq_len: int) -> list[Probe]:
    """The trainer's probes: :class:`Weights` every ``probe_every`` steps (and each step after, with
    ``probe_paired``); with ``lens_every`` > 0, the activation
    and gradient spectra of the deepest block every ``lens_every`` steps over a seeded pool of ``pool_size``
    sequences from the corpus' probe split. A list of probes."""
    probes: list[Probe] = [Weights(every=cfg.probe_every, paired=cfg.probe_paired)]
    if cfg.lens_every > 0:
        pool = make_pool(corpus.probe, n=cfg.pool_size, seq_len=seq_len, seed=0)
        probes += [Activations(pool, every=cfg.lens_every), Gradients(pool, samples=cfg.grad_samples, every=cfg.lens_every)]
    return probes


@dataclass
class TrainResult:
    """What :func:`train` returns: the ``run_dir``, the last ``steps`` (optimizer steps) and ``tokens`` trained,
    ``final_loss`` and ``final_val_loss`` (nats per token), ``seconds`` (wall-clock time of this call, measuring
    included; 0 when there was nothing left to train) and ``tokens_per_s`` (tokens over the optimizer-step time of
    the whole run)."""

    run_dir: Path
    steps: int
    tokens: int
    final_loss: float
    final_val_loss: float
    seconds: float
    tokens_per_s: float
    extra: dict = field(default_factory=dict)


def train(
    model_cfg: GPTConfig,
    cfg: TrainConfig,
    run_dir: str | Path,
    probes: Iterable[Probe] | None = None,
    corpus: Corpus | None = None,
    progress: bool = True,
    run_id: str | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the reference GPT on a corpus while a :class:`~specscope.Monitor` watches it.

    With ``cfg.stop_at`` the run stops after that step and saves its state; ``resume=True`` picks a
    run directory's saved state up (weights, optimizer, data and torch RNG) and continues to
    ``cfg.stop_at`` or ``cfg.steps``, appending to the same run store. A resumed run equals an
    uninterrupted one (tested); probes start afresh (a trajectory window refills).

    ``probes`` default to :func:`default_probes`; the weights are checkpointed every ``cfg.ckpt_every`` steps and
    at the last. Returns a :class:`TrainResult`.
    """
    run_dir = Path(run_dir)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    corpus = corpus or load_corpus(cfg.corpus, cfg.tokenizer, cfg.bpe_vocab, cfg.max_corpus_bytes)
    if model_cfg.vocab_size != corpus.vocab_size:
        model_cfg = GPTConfig(**{**model_cfg.to_dict(), "vocab_size": corpus.vocab_size})
    model = GPT(model_cfg)
    if cfg.spectral_warmup:
        from .warmup import spectral_warmup

        spectral_warmup(model, cfg.spectral_warmup, cfg.spectral_warmup_scale, seed=cfg.seed)
    model = model.to(device)
    opt = make_optimizer(model, cfg)
    probes = list(probes) if probes is not None else default_probes(cfg, corpus, model_cfg.seq_len)
    config = {"model": model_cfg.to_dict(), "train": asdict(cfg), "corpus": corpus.summary(),
              "n_params": model.num_params(), "trainer": "specscope.train"}
    data_gen = np.random.default_rng(cfg.seed + 1)
    seq = model_cfg.seq_len
    tokens_per_step = cfg.effective_batch * seq
    tokens = 0
    train_seconds = 0.0
    start = 0
    if resume and (run_dir / "checkpoints" / STATE_FILE).is_file():
        start, tokens, train_seconds = load_state(run_dir, model, opt, data_gen)
    last = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    if start >= last:  # already trained this far: the run store stays as it is
        summ = open_run(run_dir).meta.get("summary", {}) if is_run_dir(run_dir) else {}
        return TrainResult(run_dir, start, tokens, summ.get("final_loss", float("nan")), summ.get("final_val_loss", float("nan")),
                           0.0, tokens / max(train_seconds, 1e-9))
    loss_val = float("nan")
    val_loss = float("nan")
    bar = progress_bar(last, "train", "step", progress, initial=start)
    t_start = time.perf_counter()
    with Monitor(model, run_dir, probes=probes, run_id=run_id, config=config, resume=resume) as mon:
        if start == 0:
            mon.step(0, tokens=0)  # due probes measure, every-step probes see the initial weights
            val_loss = evaluate(model, corpus.val, cfg, seq, device)
            mon.log(0, tokens=0, val_loss=val_loss)
        model.train()
        for step in range(start + 1, last + 1):
            t0 = time.perf_counter()
            lr = lr_at(step - 1, cfg)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            total = 0.0
            for _ in range(cfg.grad_accum):
                x, y = sample_batch(corpus.train, cfg.micro_batch, seq, data_gen)
                _, loss = model(torch.from_numpy(x).long().to(device), torch.from_numpy(y).long().to(device))
                (loss / cfg.grad_accum).backward()
                total += float(loss.detach()) / cfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            opt.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            train_seconds += dt
            tokens += tokens_per_step
            loss_val = total
            scalars = {"lr": lr, "lr_hidden": lr * (cfg.muon_lr / cfg.lr if cfg.optimizer == "muon" else 1.0),
                       "tokens_per_s": tokens_per_step / dt if dt > 0 else float("nan")}
            if grad_norm is not None:
                scalars["grad_norm"] = grad_norm
            if step % cfg.eval_every == 0 or step == last:
                val_loss = evaluate(model, corpus.val, cfg, seq, device)
                scalars["val_loss"] = val_loss
            if step == last or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                save_checkpoint(model, run_dir, step)
                save_state(run_dir, step, opt, data_gen, tokens, train_seconds)
            mon.step(step, loss=loss_val, tokens=tokens, **scalars)
            if step == last and not any(p.due(step) for p in probes):
                mon.measure(step, tokens=tokens)  # always measure the final model
            bar.set_postfix(loss=f"{loss_val:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tokens / max(train_seconds, 1e-9):,.0f}")
            bar.update(1)
        mon.writer.write_meta(summary={"steps": last, "tokens": tokens, "final_loss": loss_val, "final_val_loss": val_loss,
                                       "train_seconds": train_seconds, "tokens_per_s": tokens / max(train_seconds, 1e-9)})
    bar.close()
    return TrainResult(run_dir, last, tokens, loss_val, val_loss, time.perf_counter() - t_start,
                       tokens / max(train_seconds, 1e-9))
