"""Commands on runs and models: ``demo``, ``train``, ``report``, ``query``, ``analyze``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..models.kinds import KINDS
from . import args as A
from .args import fresh_dir


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--layers", type=A.positive_int, default=4)
    g.add_argument("--width", type=A.positive_int, default=128)
    g.add_argument("--heads", type=A.positive_int, default=4)
    g.add_argument("--seq-len", type=A.int_at_least(2), default=128)
    g.add_argument("--positions", choices=["learned", "rope"], default="learned")
    g.add_argument("--untied", action="store_true", help="separate lm_head (default: tied to the embedding)")
    g.add_argument("--norm", choices=["rms", "layer"], default="rms")
    g.add_argument("--activation", choices=["gelu", "relu2"], default="gelu")
    g.add_argument("--qk-norm", action="store_true", help="RMS-normalize queries and keys per head")
    g.add_argument("--softcap", type=A.nonneg_float, default=0.0, help="logit soft-cap (0: off)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=A.positive_int, default=1000)
    t.add_argument("--batch", type=A.positive_int, default=16, help="micro-batch (sequences)")
    t.add_argument("--accum", type=A.positive_int, default=1, help="gradient accumulation steps (effective batch = batch x accum)")
    t.add_argument("--lr", type=A.positive_float, default=3e-3)
    t.add_argument("--warmup", type=A.nonneg_int, default=50)
    t.add_argument("--schedule", choices=["constant", "cosine", "wsd", "step"], default="cosine",
                   help="wsd: warm-up, stable, linear decay over the last 20%%; step: x0.1 at 50%% and 75%%")
    t.add_argument("--weight-decay", type=A.nonneg_float, default=0.1)
    t.add_argument("--decay-on", default="hidden,embed,head", help="parameter groups with weight decay: hidden,embed,head,scalar")
    t.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw", help="muon: Muon on hidden matrices, AdamW on the rest")
    t.add_argument("--muon-lr", type=A.positive_float, default=0.02)
    t.add_argument("--spectral-warmup", type=A.existing_path, default=None, metavar="CHECKPOINT",
                   help="initialize block matrices with this reference's singular values (random singular vectors)")
    t.add_argument("--eval-every", type=A.nonneg_int, default=100)
    t.add_argument("--ckpt-every", type=A.nonneg_int, default=0)
    t.add_argument("--probe-every", type=A.nonneg_int, default=25)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", type=A.device, default="cpu")
    t.add_argument("--corpus", type=A.corpus, default="stdlib",
                   help="'stdlib' (the Python standard library's sources) or a directory of text files")
    t.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte")
    t.add_argument("--bpe-vocab", type=A.positive_int, default=2048)
    t.add_argument("--max-corpus-mb", type=A.positive_float, default=None)
    p.add_argument("--out", type=A.new_dir, default=None, help="run directory (default: runs/<name>)")
    p.add_argument("--no-progress", action="store_true")


def _configs(a: argparse.Namespace):
    from ..train import GPTConfig, TrainConfig
    from ..train.corpus import megabytes

    model = GPTConfig(seq_len=a.seq_len, n_layer=a.layers, n_head=a.heads, d_model=a.width, positions=a.positions,
                      tied=not a.untied, norm=a.norm, activation=a.activation, qk_norm=a.qk_norm, softcap=a.softcap)
    train = TrainConfig(steps=a.steps, micro_batch=a.batch, grad_accum=a.accum, lr=a.lr, warmup=a.warmup,
                        schedule=a.schedule, weight_decay=a.weight_decay, optimizer=a.optimizer, muon_lr=a.muon_lr,
                        decay_on=tuple(x for x in a.decay_on.split(",") if x), spectral_warmup=a.spectral_warmup, eval_every=a.eval_every,
                        ckpt_every=a.ckpt_every, probe_every=a.probe_every, seed=a.seed, device=a.device,
                        corpus=a.corpus, tokenizer=a.tokenizer, bpe_vocab=a.bpe_vocab,
                        max_corpus_bytes=megabytes(a.max_corpus_mb))
    return model, train


def _train_and_report(a: argparse.Namespace, default_out: str) -> int:
    from ..report import summary, write_report
    from ..store import open_run
    from ..train import train

    model_cfg, train_cfg = _configs(a)  # validated before anything is written (--out: an absent or empty directory)
    out = Path(a.out or default_out)
    res = train(model_cfg, train_cfg, out, progress=not a.no_progress)
    path = write_report(res.run_dir)
    print(summary(open_run(res.run_dir)))
    print(f"report: {path}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """``specscope demo``: train the reference GPT with the probes into a fresh ``runs/demo`` (or ``--out``), print
    the summary and write the report. Returns the exit code, 0."""
    out = a.out or fresh_dir("runs/demo")
    return _train_and_report(a, out)


def cmd_train(a: argparse.Namespace) -> int:
    """``specscope train``: train a GPT of the given size into a fresh ``runs/train`` (or ``--out``), print the
    summary and write the report. Returns the exit code, 0."""
    return _train_and_report(a, a.out or fresh_dir("runs/train"))


def cmd_report(a: argparse.Namespace) -> int:
    """``specscope report RUN...``: print each run's summary and write the HTML report: one run's own (inside the run,
    or ``--out``), or with several runs one report overlaying them (``--out``, default ``compare-report.html`` in the
    runs' common parent directory). ``--figures FORMAT`` also writes each figure as a file beside the report. Returns
    the exit code, 0."""
    import os

    from ..report import summary, write_report
    from ..report.overlay import write_overlay
    from ..store import open_run

    runs = [open_run(r) for r in a.runs]
    for run in runs:
        print(summary(run))
    if len(runs) == 1:
        path = write_report(runs[0].dir, a.out, a.figures)
    else:
        out = a.out or Path(os.path.commonpath([str(r.dir.resolve()) for r in runs])) / "compare-report.html"
        path = write_overlay(runs, out, a.figures)
    print(f"report: {path}")
    return 0


def cmd_query(a: argparse.Namespace) -> int:
    """``specscope query SQL --runs ...``: run SQL over the run stores and print the result as a table, CSV or JSON.
    Returns the exit code, 0."""
    from ..store.query import query

    df = query(a.sql, a.runs)
    if a.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif a.format == "json":
        sys.stdout.write(df.to_json(orient="records") + "\n")
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", a.max_rows, "display.width", 200, "display.max_columns", 50):
            print(df.to_string(index=False, max_rows=a.max_rows))
    return 0


TABLE_COLUMNS = ["name", "layer", "kind", "part", "d_out", "d_in", "slices", "alpha_mle", "alpha_weighted", "stable_rank",
                 "entropy_norm", "log_norm", "alpha_tail", "spectral_norm", "status"]
SERIES_COLUMNS = ["step", "name", "layer", "kind", "part", "alpha_mle", "stable_rank", "alpha_tail", "sd_variation", "cos_sd_final",
                  "cos_w_final", "compression", "status"]


TRAJECTORY_COLUMNS = ["step", "name", "window_updates", "kstar", "gap_ratio", "gap12", "k95", "stability[1]", "stability[2]"]


def _matrix_arg(text: str) -> tuple[int, str]:
    layer, _, kind = text.partition(":")
    if not kind or not layer.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected LAYER:KIND (e.g. 0:q), got {text!r}")
    return int(layer), kind


def cmd_analyze(a: argparse.Namespace) -> int:
    """``specscope analyze PATH``: measure a checkpoint (or a folder of step checkpoints; ``--trajectory W``: their
    update trajectories) without training (``--ray``: fanned out on Ray), print the table or write it (``--out``,
    ``--format``), or store it as a run (``--into``). Returns the exit code, 0."""
    from ..offline import analyze, analyze_into, trajectory

    if a.format != "table" and not a.out:
        raise ConfigError(f"--format {a.format} needs --out FILE")
    if a.out and a.format == "table":
        raise ConfigError("--out needs --format csv|json|parquet")
    if a.trajectory == 1:
        raise ConfigError("--trajectory W needs a window of at least 2 updates")
    if (a.sketch or a.matrix) and not a.trajectory:
        raise ConfigError("--sketch and --matrix go with --trajectory W")
    if a.ray and a.trajectory:
        raise ConfigError("--ray goes with weight analysis, not --trajectory (a trajectory runs through the checkpoints in order)")
    kinds = a.kinds
    if a.trajectory:
        df = trajectory(a.path, window=a.trajectory, mode="sketch" if a.sketch else "exact", k=a.sketch or 4096, kinds=kinds,
                        matrices=a.matrix, run_dir=a.into, progress=not a.no_progress)
    elif a.into:
        df = analyze_into(a.path, a.into, method=a.method, kinds=kinds, progress=not a.no_progress, ray=a.ray)
    else:
        df = analyze(a.path, method=a.method, kinds=kinds, progress=not a.no_progress, ray=a.ray)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if a.format == "csv":
            df.to_csv(out, index=False)
        elif a.format == "json":
            df.to_json(out, orient="records", indent=1)
        else:
            df.to_parquet(out, index=False)
        print(f"wrote {len(df)} rows to {out}")
    if a.format == "table" or not a.out:
        import pandas as pd

        shown = TRAJECTORY_COLUMNS if a.trajectory else SERIES_COLUMNS if "step" in df.columns else TABLE_COLUMNS
        cols = [c for c in shown if c in df.columns]
        with pd.option_context("display.width", 220, "display.max_columns", 50, "display.float_format", "{:.4g}".format):
            print(df[cols].to_string(index=False, max_rows=a.max_rows))
    if a.into:
        print(f"run store: {a.into}  (specscope report {a.into})")
    return 0


def register(sub) -> None:
    """Add this group's subcommands to the ``specscope`` parser's subparsers ``sub``."""
    d = sub.add_parser("demo", help="train the reference GPT on the stdlib corpus with the weight probe, then report")
    _add_model_args(d)
    d.set_defaults(func=cmd_demo, steps=1200, eval_every=100)
    t = sub.add_parser("train", help="train the reference GPT with the weight probe")
    _add_model_args(t)
    t.set_defaults(func=cmd_train)
    r = sub.add_parser("report", help="write the HTML report of runs and print their summaries")
    r.add_argument("runs", nargs="+", type=A.existing_path)
    r.add_argument("--out", type=A.out_file, default=None,
                   help="HTML file (default: RUN/report.html; several runs: compare-report.html in their common parent)")
    r.add_argument("--figures", choices=["png", "pdf", "svg"], default=None,
                   help="also write each figure as a file of this format into <report stem>_figures/ beside the report")
    r.set_defaults(func=cmd_report)
    an = sub.add_parser("analyze", help="weight spectra of a model, checkpoint, or directory of step-numbered checkpoints")
    an.add_argument("path", type=A.existing_path,
                    help="HF model directory, .safetensors, torch checkpoint (.pt .pth .bin .ckpt), or a directory of checkpoints")
    an.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    an.add_argument("--out", type=A.out_file, default=None, help="output file for --format csv|json|parquet")
    an.add_argument("--into", type=A.out_dir, default=None, help="also write into this run store directory (for report / findings)")
    an.add_argument("--method", choices=["gram", "svd"], default="gram")
    an.add_argument("--kinds", type=A.kinds_list, default=None, help="comma-separated kinds to keep (" + ",".join(KINDS) + ")")
    an.add_argument("--trajectory", type=A.nonneg_int, default=0, metavar="W",
                    help="with a directory of checkpoints: spectra of the last W checkpoint-to-checkpoint updates instead")
    an.add_argument("--sketch", type=A.nonneg_int, default=0, metavar="K", help="--trajectory: CountSketch the updates to K dims")
    an.add_argument("--matrix", type=_matrix_arg, action="append", default=[], metavar="LAYER:KIND",
                    help="--trajectory: also a trajectory of this one matrix (repeatable), e.g. 0:q")
    an.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="fan out on Ray: a local Ray, or the cluster at ADDRESS (its workers must see PATH)")
    an.add_argument("--max-rows", type=A.positive_int, default=60)
    an.add_argument("--no-progress", action="store_true")
    an.set_defaults(func=cmd_analyze)
    q = sub.add_parser("query", help="SQL over run stores (views: metrics, spectra, scalars, runs)")
    q.add_argument("sql")
    q.add_argument("--runs", nargs="+", type=A.existing_path, default=["runs"],
                   help="run directories or roots holding runs (default: runs)")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--max-rows", type=A.positive_int, default=200)
    q.set_defaults(func=cmd_query)
