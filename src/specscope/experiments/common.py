"""What every built-in study returns, the settings of the studies that train the reference GPT on the
stdlib corpus, and small helpers they share."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from ..probes import Weights
from ..probes.schedule import ScheduleLike
from ..train import Corpus, GPTConfig, TrainConfig, TrainResult, load_corpus, train
from ..train.corpus import megabytes


@dataclass
class ExperimentResult:
    """A study's outcome: its per-run ``table``, the ``claims`` table (the paper's claim beside our
    number and a verdict), the directory holding its runs and files, and its figure (PNG path or None)."""

    table: pd.DataFrame
    claims: pd.DataFrame
    out_dir: Path
    figure: Path | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class CorpusStudy:
    """Model and training settings of a study that trains the reference GPT on the stdlib corpus with the
    weight probe: width ``d_model``, ``n_head`` heads, ``seq_len`` tokens a sequence, ``steps`` optimizer
    steps of ``micro_batch`` sequences, peak learning rate ``lr`` after ``warmup`` steps, the probe every
    ``probe_every`` steps (and each step after, with ``paired``), ``seed`` (of one run; ``seeds``: the seeds a
    study repeats its runs over, its claims reporting mean and spread across them), and the corpus cut to
    ``max_corpus_mb`` MiB (None: all of it)."""

    d_model: int = 128
    n_head: int = 4
    seq_len: int = 128
    steps: int = 1000
    micro_batch: int = 16
    lr: float = 3e-3
    warmup: int = 50
    probe_every: int = 25
    paired: bool = False
    seed: int = 0
    seeds: tuple[int, ...] = (0,)
    max_corpus_mb: float | None = None

    def corpus(self) -> Corpus:
        """The stdlib corpus, cut to ``max_corpus_mb`` MiB."""
        return load_corpus("stdlib", max_bytes=megabytes(self.max_corpus_mb))

    def train_run(self, corpus: Corpus, n_layer: int, run_dir: str | Path, run_id: str, evals: int,
                  progress: bool = True, seed: int | None = None, probe_schedule: ScheduleLike | None = None,
                  **train_cfg) -> TrainResult:
        """Train one GPT of ``n_layer`` blocks on ``corpus`` into ``run_dir`` with these settings, the weight
        probe every ``probe_every`` steps (or on ``probe_schedule``, e.g. ``log_spaced(1, steps) | every(25)``) and
        about ``evals`` validation evaluations, seeded with ``seed`` (default ``self.seed``; ``train_cfg``: more
        :class:`~specscope.train.TrainConfig` fields); returns the trainer's result."""
        model_cfg = GPTConfig(vocab_size=corpus.vocab_size, seq_len=self.seq_len, n_layer=n_layer, n_head=self.n_head,
                              d_model=self.d_model)
        tcfg = TrainConfig(steps=self.steps, micro_batch=self.micro_batch, lr=self.lr, warmup=self.warmup,
                           seed=self.seed if seed is None else seed,
                           eval_every=max(1, self.steps // evals), probe_every=self.probe_every, lens_every=0, **train_cfg)
        every = self.probe_every if probe_schedule is None else probe_schedule
        probes = [Weights(every=every, paired=self.paired)]
        return train(model_cfg, tcfg, run_dir, probes=probes, corpus=corpus, progress=progress, run_id=run_id)


def with_overrides(cfg, **kw):
    """``cfg`` (a dataclass) with the given fields replaced (None values ignored)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
