"""The paper's toy batch sweep (Spectral Lens Fig. 4a, SPEC 5.6 / 5.8): the cyclic-shift task on a
two-layer, four-head reference-family transformer of width 128 with RoPE positions and tied
embeddings, one run per batch size ``B in {32, 64, 128, 256, 512}`` and seed, every run trained
to the same token budget. The paper's Fig. 4a is its Muon stage; the default optimizer here is
AdamW (the RoPE stage), since Muon's orthogonalization costs a fixed time per step that the small
batches' many steps multiply past the CPU budget (``optimizer="muon"`` runs the Muon stage).

Each run logs its validation loss (next-token cross-entropy on held-out sequences, every
position from the second on: all of them are determined by the first two tokens) and the
activation covariance spectrum of its deepest block on a fixed pool of held-out sequences,
both every ``eval_tokens`` tokens, so every batch size is evaluated and probed at the same
token counts. Learning rates follow the square-root rule
``lr(B) = lr0 * sqrt(B / B0)`` (AdamW part and Muon part alike) after a linear warmup over the
first ``warmup_frac`` of the tokens; the paper chose each rate by successive halving.

Per seed: ``T(B)`` at the target (the loosest loss every run of the seed reached, unless
given), ``eps_tok``, early ``alpha_tail`` over the paper's window ``[10, 40]`` (every bank
window reported beside it) at 20% of the median ``T``, and Spearman rho
(:func:`specscope.experiments.lens.family_analysis`).

Default size: c = 64 phases, every step size, sequences of 8 tokens (4,032 sequences, 80% for
training), 131,072 tokens a run (B = 512: 32 steps; B = 32: 512 steps), evaluated and probed
every 4,096 tokens; 15 runs at ``--seeds 3``. Measured: about 4.5 minutes a seed (5 runs) on a
2-core CPU shared at a load of about 15 (one torch thread), so about 5-7 minutes for 3 seeds on
an idle one. The runs sit in ``OUT/seed<s>/B<batch>`` and a rerun reuses the finished ones.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..monitor import Monitor
from ..probes import Activations
from ..progress import track
from ..store.reader import Run, is_run_dir, open_run
from ..train import GPT, GPTConfig, TrainConfig
from ..train.optim import make_optimizer
from .toy import ToyData, cyclic_shift


@dataclass
class ToyLensConfig:
    """The toy sweep's settings: the task (``c`` phases, ``length`` tokens a sequence, ``shifts`` the step sizes ``d``
    (None: every ``d`` in ``1..c-1``), ``train_frac``), the model (``n_layer``, ``n_head``, ``d_model``,
    ``positions``, ``optimizer``), the ``batches`` (sequences per step), ``tokens`` per run and ``eval_tokens``
    between evaluations and activation spectra (tokens = sequences x ``length``), the rule's ``ref_batch``,
    ``ref_lr`` (AdamW) and ``ref_muon_lr``, ``warmup_frac`` (of the tokens), ``pool_size`` (held-out sequences of the
    activation probe), ``val_samples`` (held-out sequences of the validation loss), ``target`` (loss; None: the
    loosest every run of a seed reached), ``budget_frac`` (early budget as a fraction of the median ``T``),
    ``window`` (the tail window, 1-based ranks; None: chosen by the model's width) and ``seeds``."""

    c: int = 64
    length: int = 8
    shifts: tuple[int, ...] | None = None
    train_frac: float = 0.8
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    positions: str = "rope"
    optimizer: str = "adamw"
    batches: tuple[int, ...] = (32, 64, 128, 256, 512)
    tokens: int = 131_072
    eval_tokens: int = 4_096
    ref_batch: int = 128
    ref_lr: float = 3e-3
    ref_muon_lr: float = 0.02
    warmup_frac: float = 0.05
    pool_size: int = 128
    val_samples: int = 256
    target: float | None = None
    budget_frac: float = 0.2
    window: tuple[int, int] | None = (10, 40)  # the paper's Fig. 4a window
    seeds: tuple[int, ...] = (0,)

    @classmethod
    def quick(cls) -> "ToyLensConfig":
        """A seconds-long configuration (c = 16, width 32, three batch sizes, 8,192 tokens a run, the tail window chosen
        by width) for tests."""
        return cls(c=16, d_model=32, batches=(4, 8, 16), tokens=8_192, eval_tokens=512, ref_batch=8, pool_size=32,
                   val_samples=128, window=None)

    def data(self, seed: int) -> ToyData:
        """The cyclic-shift train / held-out split of ``seed``: a :class:`~specscope.experiments.toy.ToyData`."""
        shifts = self.shifts if self.shifts is not None else tuple(range(1, self.c))
        return cyclic_shift(self.c, self.length, offset=0, steps=shifts, train_frac=self.train_frac, seed=seed)

    def lr_scale(self, batch: int) -> float:
        """The square-root rule's factor ``sqrt(batch / ref_batch)`` (dimensionless)."""
        return math.sqrt(batch / self.ref_batch)


def shift_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of the cyclic-shift sequences ``x`` followed by their answers ``y``, over
    every position from the second on (the second token and all later ones are determined by the first two; the
    first prediction is not): a 0-d tensor."""
    target = torch.cat([x[:, 1:], y[:, None]], dim=1)[:, 1:]
    logits = model(x)[0][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def _val_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> float:
    """:func:`shift_loss` (nats) over held-out ``x``, ``y`` without gradients; the model's mode is restored."""
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = shift_loss(model, x, y).item()
    model.train(was)
    return loss


def run_toy(cfg: ToyLensConfig, batch: int, seed: int, run_dir: Path) -> Run:
    """Train one monitored run of batch size ``batch`` (sequences per step) and ``seed`` into ``run_dir`` to
    ``cfg.tokens`` tokens: the opened :class:`Run`. A finished run directory (marked ``DONE``) is opened, not
    retrained; an unfinished one is trained again from scratch."""
    if is_run_dir(run_dir) and (run_dir / "DONE").is_file():
        return open_run(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    data = cfg.data(seed)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=data.vocab_size, seq_len=cfg.length, n_layer=cfg.n_layer, n_head=cfg.n_head,
                          d_model=cfg.d_model, positions=cfg.positions))
    scale = cfg.lr_scale(batch)
    tcfg = TrainConfig(optimizer=cfg.optimizer, lr=cfg.ref_lr * scale, muon_lr=cfg.ref_muon_lr * scale, weight_decay=0.0)
    opt = make_optimizer(model, tcfg)
    per_step = batch * cfg.length
    steps = max(1, math.ceil(cfg.tokens / per_step))
    every = max(1, round(cfg.eval_tokens / per_step))
    warm = max(1, round(cfg.warmup_frac * steps))
    vx, vy = data.test_x[: cfg.val_samples], data.test_y[: cfg.val_samples]
    pool = data.test_x[-cfg.pool_size:]
    gen = torch.Generator().manual_seed(10_000 + seed)
    config = {"experiment": "lens-toy", "family": f"cyclic-shift-seed{seed}", "batch": batch, "seed": seed,
              "model": {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "positions": cfg.positions},
              "train": {"micro_batch": batch, "grad_accum": 1, "lr": tcfg.lr, "muon_lr": tcfg.muon_lr,
                        "optimizer": cfg.optimizer}, "toy": asdict(cfg)}
    n = len(data.train_x)
    with Monitor(model, run_dir, probes=[Activations(pool, every=every, batch=64)], config=config, run_id=run_dir.name) as mon:
        mon.step(0, tokens=0, val_loss=_val_loss(model, vx, vy))
        for step in range(1, steps + 1):
            for g in opt.param_groups:
                g["lr"] = tcfg.lr * g["lr_scale"] * min(1.0, step / warm)
            idx = torch.randint(0, n, (batch,), generator=gen)
            loss = shift_loss(model, data.train_x[idx], data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            evals = {"val_loss": _val_loss(model, vx, vy)} if step % every == 0 or step == steps else {}
            mon.step(step, loss=loss.item(), tokens=step * per_step, **evals)
    (run_dir / "DONE").write_text("")
    return open_run(run_dir)


def toy_family(cfg: ToyLensConfig, seed: int, out: Path, progress: bool = True) -> list[Run]:
    """One run per batch size of ``cfg`` for ``seed`` under ``out/seed<seed>/B<batch>`` (finished runs reused): a list
    of :class:`Run`, in batch order."""
    return [run_toy(cfg, b, seed, out / f"seed{seed}" / f"B{b}")
            for b in track(cfg.batches, f"toy sweep, seed {seed}", "run", progress)]
