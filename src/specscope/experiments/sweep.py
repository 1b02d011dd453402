"""Batch-size sweeps (``specscope sweep CONFIG``): per batch tier the learning-rate candidates of
:func:`~specscope.experiments.halving.lr_candidates`, filtered by synchronized successive halving; each
rung runs every surviving trial as one Ray Tune run (a local Ray by default, a cluster with
``address``), or in this process with ``executor="local"``.

Each trial is a monitored run of the reference trainer in ``OUT/trials/<name>``: tier ``B`` =
``micro_batch x accum`` sequences, its schedule spanning the last rung's tokens, stopped at each
rung and resumed at the next (``train(resume=True)``), so a sweep that is killed picks up where it
was: finished rungs return at once from the trials' stored state.

A config is TOML or JSON::

    name = "lens"
    batches = [1, 2, 4, 8, 16]     # effective batch tiers (sequences)
    ref_batch = 8                  # B0 of the learning-rate rule
    ref_lr = 3e-3                  # lr0
    micro_batch = 4                # largest micro-batch; B = micro x accum
    rungs = [200000, 600000, 2000000]  # tokens
    [model]                        # GPTConfig fields
    n_layer = 4
    [train]                        # TrainConfig fields (lr, steps, micro_batch, grad_accum are set per trial)
    schedule = "wsd"
    [train_tokens]                 # TrainConfig step counts given in tokens, converted per tier
    eval_every = 50000             # (so every tier evaluates and probes at the same token counts)
    lens_every = 50000
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..raysetup import init_ray
from .halving import MULTIPLIERS, Candidate, lr_candidates, one_at_a_time, successive_halving

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    """One sweep (the module docstring shows its file form): ``batches`` (sequences per step), the learning-rate
    rule's ``ref_batch`` and ``ref_lr``, ``micro_batch``, ``rungs`` (increasing token counts), ``keep`` (fraction of
    each group promoted per rung), ``multipliers``, the ``model`` (GPTConfig), ``train`` (TrainConfig) and
    ``train_tokens`` (TrainConfig step counts given in tokens) switches, ``corpus`` and ``max_corpus_mb`` (MB)."""

    name: str = "sweep"
    batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    ref_batch: int = 8
    ref_lr: float = 3e-3
    micro_batch: int = 4
    rungs: list[int] = field(default_factory=lambda: [200_000, 600_000, 2_000_000])
    keep: float = 0.5
    multipliers: list[float] = field(default_factory=lambda: list(MULTIPLIERS))
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    train_tokens: dict = field(default_factory=dict)  # TrainConfig step counts in tokens (eval_every, lens_every, warmup...)
    corpus: str = "stdlib"
    max_corpus_mb: float | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SweepConfig":
        """Read and check a TOML (``.toml``) or JSON config file: a checked :class:`SweepConfig`; a missing file, a
        parse error or an unknown key is a :class:`ConfigError`."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"no such sweep config: {p}")
        try:
            if p.suffix == ".toml":
                import tomllib

                data = tomllib.loads(p.read_text())
            else:
                data = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: {exc}") from None
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{p}: unknown keys {sorted(unknown)}")
        cfg = cls(**data)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise :class:`ConfigError` (one line) on non-positive batches, a batch that ``micro_batch`` does not divide,
        rungs that do not increase, or unknown train settings; return None when the config is sound."""
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError("batches must be positive integers")
        for b in self.batches:
            micro = min(b, self.micro_batch)
            if b % micro:
                raise ConfigError(f"batch {b} is not a multiple of micro_batch {micro}")
        if not self.rungs or any(b <= a for a, b in zip(self.rungs, self.rungs[1:])):
            raise ConfigError("rungs must be increasing token counts")
        from ..train import TrainConfig

        bad = (set(self.train) | set(self.train_tokens)) - set(TrainConfig.__dataclass_fields__)
        if bad:
            raise ConfigError(f"unknown train settings {sorted(bad)}")

    def candidates(self) -> list[Candidate]:
        """Every (batch, learning rate) trial of the sweep: one :class:`Candidate` per rate of
        :func:`lr_candidates`, named ``B<batch>-lr<rate>``, grouped by batch tier."""
        out = []
        for b in self.batches:
            for lr in lr_candidates(b, self.ref_batch, self.ref_lr, self.multipliers):
                out.append(Candidate(f"B{b}-lr{lr:.4g}", ("family", b), {"batch": b, "lr": lr}))
        return out


@dataclass
class BudgetedRuns:
    """Runs of the reference GPT on the stdlib corpus trained to one token budget, evaluated and
    probed (weights, activations, gradients) every ``eval_tokens`` at every batch size: the common
    ground of the lens and taxonomy experiments, each run one trial (:func:`run_trial`). ``tokens``
    is the budget per run and ``eval_tokens`` the evaluation period (both in tokens); ``target`` the
    validation loss to reach (None: chosen from the runs); ``pool_size`` the probe pool (sequences)."""

    micro_batch: int = 16
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    seq_len: int = 128
    tokens: int = 2_000_000  # per run
    eval_tokens: int = 50_000  # evaluate / probe every this many tokens
    target: float | None = None  # validation loss target (None: chosen from the runs)
    pool_size: int = 64
    seed: int = 0
    seeds: tuple[int, ...] = (0,)  # the seeds a study repeats its runs over
    max_corpus_mb: float | None = None

    QUICK = {"n_layer": 2, "d_model": 32, "n_head": 2, "seq_len": 32, "eval_tokens": 1_000, "pool_size": 8, "max_corpus_mb": 2.0}

    def trial_config(self, model: dict | None = None, train: dict | None = None, **sweep) -> SweepConfig:
        """A :class:`SweepConfig` for these runs (one rung at the full budget; evaluation, probing and warmup every
        ``eval_tokens``); ``model`` / ``train`` add GPTConfig / TrainConfig switches, ``sweep`` sets its fields."""
        every = self.eval_tokens
        return SweepConfig(**{"rungs": [self.tokens], "micro_batch": self.micro_batch, "max_corpus_mb": self.max_corpus_mb,
                              "model": {"seq_len": self.seq_len, "n_layer": self.n_layer, "n_head": self.n_head,
                                        "d_model": self.d_model, **(model or {})},
                              "train": {"seed": self.seed, "pool_size": self.pool_size, **(train or {})},
                              "train_tokens": {"eval_every": every, "probe_every": every, "lens_every": every, "warmup": every},
                              **sweep})


def trial_dir(out_dir: str | os.PathLike, name: str) -> Path:
    """Where a sweep (or an experiment built on trials) keeps the run of trial ``name``: ``out_dir/trials/name``, a
    Path (not created)."""
    return Path(out_dir) / "trials" / str(name)


def _steps(tokens: float, batch: int, seq_len: int) -> int:
    return max(1, math.ceil(tokens / (batch * seq_len)))


def run_trial(spec: dict, cand: dict, rung_tokens: float, out_dir: str, progress: bool = False) -> float:
    """Train (or resume) one candidate (``cand``: ``name``, ``batch``, ``lr``) of the sweep ``spec`` (a
    :class:`SweepConfig` as a dict) to ``rung_tokens`` tokens: its last validation loss up to there, a float (NaN
    when the trial failed or never evaluated; the failure is logged, not raised)."""
    from ..store.reader import open_run
    from ..train.corpus import megabytes
    from ..train import GPTConfig
    from ..train import TrainConfig, train

    cfg = SweepConfig(**spec)
    model_cfg = GPTConfig(**cfg.model)
    b = int(cand["batch"])
    micro = min(b, cfg.micro_batch)
    steps = _steps(cfg.rungs[-1], b, model_cfg.seq_len)
    stop = _steps(rung_tokens, b, model_cfg.seq_len)
    per_tier = {k: _steps(v, b, model_cfg.seq_len) for k, v in cfg.train_tokens.items()}
    tcfg = TrainConfig(**{**cfg.train, **per_tier, "steps": steps, "stop_at": stop, "micro_batch": micro, "grad_accum": b // micro,
                          "lr": float(cand["lr"]), "corpus": cfg.corpus,
                          "max_corpus_bytes": megabytes(cfg.max_corpus_mb)})
    run_dir = trial_dir(out_dir, cand["name"])
    try:
        train(model_cfg, tcfg, run_dir, progress=progress, run_id=cand["name"], resume=True)
        sc = open_run(run_dir).scalars()
        val = sc[sc["step"] <= stop].dropna(subset=["val_loss"]) if "val_loss" in sc else sc.head(0)
        return float(val.sort_values("step")["val_loss"].iloc[-1]) if len(val) else float("nan")
    except Exception as exc:  # a failed trial ranks last; the sweep goes on
        log.warning("trial %s failed: %s", cand["name"], exc)
        return float("nan")


def _ray_trial(config: dict) -> None:
    loss = run_trial(config["spec"], config["cand"], config["rung_tokens"], config["out_dir"])
    from ray import tune

    tune.report({"val_loss": loss if np.isfinite(loss) else float("nan")})


def _ray_rung(cfg: SweepConfig, out: Path, address: str | None, cpus_per_trial: float):
    init_ray(address)
    from ray import tune

    def rung(cands: list[Candidate], tokens: float) -> dict[str, float]:
        space = {"cand": tune.grid_search([{"name": c.name, **c.params} for c in cands]), "rung_tokens": tokens,
                 "spec": asdict(cfg), "out_dir": str(out.resolve())}
        tuner = tune.Tuner(tune.with_resources(_ray_trial, {"cpu": cpus_per_trial}), param_space=space,
                           run_config=tune.RunConfig(name=f"rung-{int(tokens)}", storage_path=str((out / "ray").resolve()),
                                                     verbose=0))
        results = tuner.fit()
        return {r.config["cand"]["name"]: float(r.metrics.get("val_loss", float("nan"))) if r.metrics else float("nan")
                for r in results}

    return rung


def run_sweep(cfg: SweepConfig, out_dir: str | os.PathLike, executor: str = "ray", address: str | None = None,
              cpus_per_trial: float = 1.0, progress: bool = True) -> pd.DataFrame:
    """The whole sweep under ``out_dir`` (``executor``: ``"ray"`` or ``"local"``): the halving table of
    :func:`~specscope.experiments.halving.successive_halving` (one row per candidate and rung), saved after every
    rung as ``OUT/sweep.csv``; the winners (promoted at the last rung) in ``OUT/best.csv``."""
    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    if executor == "ray":
        rung = _ray_rung(cfg, out, address, cpus_per_trial)
    elif executor == "local":
        spec = asdict(cfg)
        rung = one_at_a_time(lambda c, tokens: run_trial(spec, {"name": c.name, **c.params}, tokens, str(out), progress))
    else:
        raise ConfigError(f"executor must be 'ray' or 'local', got {executor!r}")
    save = lambda t: t.to_csv(out / "sweep.csv", index=False)  # noqa: E731
    table = successive_halving(cfg.candidates(), cfg.rungs, rung, cfg.keep, on_rung=save)
    table["group"] = table["group"].astype(str)
    save(table)
    best = table[(table["rung"] == len(cfg.rungs) - 1) & table["promoted"]]
    best.to_csv(out / "best.csv", index=False)
    return table


def sweep_winners(out_dir: str | os.PathLike) -> list[Path]:
    """The trial directories of a finished sweep's winners (``OUT/best.csv``): a list of Paths, one per tier; empty
    if ``out_dir`` holds no sweep."""
    best = Path(out_dir) / "best.csv"
    return [trial_dir(out_dir, n) for n in pd.read_csv(best)["name"]] if best.is_file() else []
