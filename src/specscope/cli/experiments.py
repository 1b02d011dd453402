"""The commands that run the SPEC section 5 analyses: ``experiment``, ``findings``, ``prune``, ``forecast``,
``taxonomy`` and ``sweep``. Each ``cmd_*`` takes the parsed arguments, prints its tables and returns the exit code."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import ConfigError
from . import args as A
from .args import fresh_dir


def _print_table(df, cols=None) -> None:
    import pandas as pd

    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 90,
                           "display.float_format", "{:.3g}".format):
        print((df[[c for c in cols if c in df.columns]] if cols else df).to_string(index=False))


TAXONOMY_COLUMNS = ["transition", "target", "T_a", "T_b", "tok_gain", "thr_gain", "d_alpha_head", "d_alpha_tail", "grad_js",
                    "d_grad_rankme", "act_shift", "grad_shift", "spectral_lean", "label"]
TAXONOMY_SUMMARY_COLUMNS = ["transition", "seeds", "tok_gain", "tok_gain_sd", "thr_gain", "thr_gain_sd", "act_shift", "grad_shift",
                            "spectral_lean", "noise", "label", "seed_labels"]


def _grokking(a: argparse.Namespace):
    from ..experiments.grokking import GrokConfig, run_grokking

    cfg = _seeded(GrokConfig.quick() if a.quick else GrokConfig(), a)
    if a.steps:
        cfg.steps = a.steps
    if a.p:
        cfg.p = a.p
    cfg.task = a.task
    try:
        cfg.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    res = run_grokking(cfg, a.out or fresh_dir("runs/grokking"), progress=not a.no_progress)
    _print_table(res.table, ["task", "weight_decay", "seed", "grok_step", "final_train_acc", "final_test_acc", "gap12_wq_before",
                             "gap12_wq_at", "gap12_wq_final", "traj_gap_before", "traj_gap_at", "traj_gap_final",
                             "h_peak_final", "h_s_final"])
    for wd, g in res.table.groupby("weight_decay"):
        print(f"weight decay {wd:g}: {g['grok_step'].notna().sum()}/{len(g)} runs grokked "
              "(test accuracy >= 0.95 from the grok step to the end of the run)")
    print(f"table: {res.out_dir / 'grokking.csv'}  figure: {res.figure}")
    return res


def _phenomena(a: argparse.Namespace):
    from ..experiments.common import with_overrides

    if a.name == "sosd":
        from ..experiments.sosd import SosdExperiment, run_sosd

        cfg = SosdExperiment.quick() if a.quick else SosdExperiment()
        cfg = _seeded(with_overrides(cfg, steps=a.steps), a)
        res = run_sosd(cfg, a.out or fresh_dir("runs/sosd"), progress=not a.no_progress)
        _print_table(res.table, ["variant", "seed", "onset_median", "onset_raw", "knee", "knee_loss", "distance_frac", "floor", "floor_lr",
                                 "sd_drop_at_mid", "sd_stable_step", "w_stable_step", "final_val_loss"])
    else:
        from ..experiments.lifecycle import LifecycleExperiment, run_lifecycle

        cfg = LifecycleExperiment.quick() if a.quick else LifecycleExperiment()
        cfg = _seeded(with_overrides(cfg, steps=a.steps), a)
        res = run_lifecycle(cfg, a.out or fresh_dir("runs/lifecycle"), progress=not a.no_progress)
        _print_table(res.table, ["depth", "seed", "wave_q_direction", "wave_q_velocity", "wave_k_direction", "wave_k_velocity",
                                 "gradient_reversal_step", "alpha_sv_shape", "alpha_sv_median", "alpha_weighted_median",
                                 "alpha_mle_median", "qk_vo_asymmetry", "delta_alpha", "rho_core", "p_core", "direction_check",
                                 "dppl_spectral", "dppl_last_n", "dppl_random", "last_n_over_spectral", "final_val_loss"])
        from ..analysis.pruning import direction_text

        print(direction_text(cfg.metric) + "; random baseline: " + f"{cfg.random_seeds} draws from the same candidates")
        for seed, v in res.extra["scaling"].items():
            print(f"seed {seed}: " + v.get("verdict", ""))
    print(f"table: {res.out_dir}  figure: {res.figure}")
    return res


def _lens(a: argparse.Namespace):
    from ..experiments.common import with_overrides
    from ..experiments.lens import LensExperiment, run_lens
    from ..experiments.lens_toy import ToyLensConfig

    if a.family == "toy":
        if a.sweep:
            raise ConfigError("--sweep applies to --family stdlib")
        cfg = ToyLensConfig.quick() if a.quick else ToyLensConfig()
    else:
        cfg = LensExperiment.quick() if a.quick else LensExperiment()
        cfg = with_overrides(cfg, sweep=a.sweep or None, executor="local" if a.local else None)
    cfg = _seeded(with_overrides(cfg, target=a.target, tokens=a.tokens), a)
    res = run_lens(cfg, a.out or fresh_dir("runs/lens"), progress=not a.no_progress)
    if not res.extra["sweep"].empty:
        print("sweep (successive halving per tier):")
        _print_table(res.extra["sweep"], ["seed", "rung", "tokens", "batch", "lr", "val_loss", "promoted"])
    print(f"family: {res.extra['family']}")
    _print_table(res.table, ["seed", "batch", "lr", "T", "censored", "eps_tok", "Q", "budget", "window", "early_alpha",
                             "predicted_rank", *[c for c in res.table.columns if c.startswith("alpha[")]])
    for seed, v in res.extra["verdicts"].items():
        print(f"seed {seed}: median T {v['median_T']:,.0f} tokens; " + v["verdict"]
              + f"; Spearman rho(early alpha, eps_tok) = {_num(v['rho_within_family'])}; by window: "
              + ", ".join(f"{w} {_num(r)}" for w, r in v["rho_by_window"].items()))
    print("rho vs early budget (fraction of the median T):")
    _print_table(res.extra["rho_vs_budget"])
    print(f"table: {res.out_dir / 'lens.csv'}  figure: {res.figure}  report: {_comparison_report(res)}")
    return res


def _taxonomy(a: argparse.Namespace):
    from ..experiments.common import with_overrides
    from ..experiments.taxonomy import TaxonomyExperiment, run_taxonomy

    cfg = TaxonomyExperiment.quick() if a.quick else TaxonomyExperiment()
    chain = tuple(s.strip() for s in a.chain.split(",")) if a.chain else None
    cfg = _seeded(with_overrides(cfg, target=a.target, tokens=a.tokens, chain=chain), a)
    res = run_taxonomy(cfg, a.out or fresh_dir("runs/taxonomy"), progress=not a.no_progress)
    print("per stage and seed, T at the loosest loss every stage of that seed reached (column target):")
    _print_table(res.extra["stages"], ["seed", "stage", "target", "T", "Q", "final_val_loss"])
    print("transitions per seed" + (f" at loss {a.target}" if a.target else ", each at the loosest loss both runs reached") + ":")
    _print_table(res.table, ["seed", *TAXONOMY_COLUMNS])
    print(f"transitions over {len(cfg.seeds)} seed(s): mean gains ± sd, labeled from the means with the gains' noise:")
    _print_table(res.extra["summary"], TAXONOMY_SUMMARY_COLUMNS)
    print(f"table: {res.out_dir / 'taxonomy.csv'}  figure: {res.figure}  report: {_comparison_report(res, chain=True)}")
    return res


def _comparison_report(res, chain: bool = False) -> Path:
    from ..report.compare import write_comparison

    return write_comparison(res.extra["runs"], res.out_dir / "report.html", target=res.extra["target"], chain=chain)


def _seeded(cfg, a: argparse.Namespace):
    """``cfg`` with ``seeds`` = 0..N-1 when ``--seeds N`` was given."""
    from ..experiments.common import with_overrides

    return with_overrides(cfg, seeds=tuple(range(a.seeds)) if a.seeds else None)


# each runs one study, prints its own table and returns its ExperimentResult
STUDIES = {"grokking": _grokking, "sosd": _phenomena, "lifecycle": _phenomena, "lens": _lens, "taxonomy": _taxonomy}


def cmd_experiment(a: argparse.Namespace) -> int:
    """``specscope experiment NAME``: run one built-in study (grokking, sosd, lifecycle, lens, taxonomy), print its
    table, then its claims table (the paper's number beside ours with its spread over seeds, and a verdict), and
    where its files went; the claims are also written as ``claims.csv`` / ``claims.md`` and the command with its
    wall time as ``result.json`` in the study's directory. Returns the exit code, 0."""
    import sys
    import time

    from ..experiments.claims import write_claims, write_result

    t0 = time.perf_counter()
    res = STUDIES[a.name](a)
    wall = time.perf_counter() - t0
    print()
    _print_table(res.claims, ["claim", "paper", "ours", "verdict"])
    write_claims(res.claims, res.out_dir)
    seeds = res.extra.get("seeds", a.seeds or 1)
    write_result(res.out_dir, a.name, " ".join(["specscope", *sys.argv[1:]]), wall, seeds)
    print(f"claims: {res.out_dir / 'claims.md'}  wall time {wall / 60:.1f} min")
    return 0


def cmd_findings(a: argparse.Namespace) -> int:
    """``specscope findings RUN...``: print every SPEC section 5 analysis of each run, as text or ``--json``. Returns
    the exit code, 0."""
    from ..analysis.findings import findings, to_json, to_text
    from ..store import open_run

    for r in a.runs:
        items = findings(open_run(r), metric=a.metric)
        print(to_json(items) if a.json else to_text(items, a.max_rows))
    return 0


def _runs(paths: list[str]):
    """Runs at or below the paths; a sweep's output directory stands for its winners (one per tier)."""
    from ..store.reader import find_runs, open_run
    from ..experiments.sweep import sweep_winners

    expanded = [str(w) for p in paths for w in (sweep_winners(p) or [p])]
    runs = [open_run(p) for p in find_runs(expanded)]
    if not runs:
        from ..errors import RunNotFoundError

        raise RunNotFoundError(f"no runs under {' '.join(paths)}")
    return runs


def cmd_forecast(a: argparse.Namespace) -> int:
    """``specscope forecast RUNS...``: rank the runs' batch sizes by their early activation tail exponent (over the
    tail window chosen by the model's width, or ``--window A:B``) and print the table, Spearman rho for every bank
    window, the censored runs and the verdict (``--json``), optionally writing a comparison report. The target
    defaults to the loosest loss every run reached. Returns the exit code, 0 (runs that lack what the forecast needs
    get a verdict saying so); a bad window or a report without a validation loss is a :class:`ConfigError`."""
    from ..analysis.lens import forecast

    try:
        runs = _runs(a.runs)
        table, verdict = forecast(runs, target=a.target, budget=a.budget, budget_frac=a.budget_frac, window=a.window)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if a.json:
        from ..store.artifacts import jsonable

        print(json.dumps({"table": json.loads(table.to_json(orient="records")), "verdict": jsonable(verdict)}, indent=1))
        return 0
    _print_table(table, ["family", "batch", "budget", "window", "early_alpha", "early_alpha_norm", "predicted_rank", "T",
                         "censored", "eps_tok", "Q", "run"])
    rho = verdict["rho_within_family"]
    print(verdict["verdict"] + ("" if rho is None else f"; Spearman rho vs eps_tok within family = {rho:.2f}"
                                                      f" (pooled {_num(verdict['rho_pooled'])})"))
    if verdict["rho_by_window"]:
        print("rho within family by tail window: " + ", ".join(f"{w}: {_num(r)}" for w, r in verdict["rho_by_window"].items()))
    if a.report:
        from ..report.compare import write_comparison

        if verdict["target"] is None:
            raise ConfigError("--report needs runs with a validation loss (the matched-loss target)")
        print(f"report: {write_comparison(runs, a.report, target=verdict['target'])}")
    return 0


def _rank_window(text: str) -> tuple[int, int]:
    """An ``argparse`` type for a rank window ``A:B`` (1-based, ``1 <= A < B``): the pair of ints, or
    ArgumentTypeError."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected a rank window A:B (e.g. 10:40), got {text!r}")
    a, b = (A.positive_int(p.strip()) for p in parts)
    if b <= a:
        raise argparse.ArgumentTypeError(f"a rank window A:B needs A < B, got {text!r}")
    return (a, b)


def _num(x) -> str:
    """``x`` with two decimals, ``n/a`` for None or NaN."""
    return "n/a" if x is None or x != x else f"{x:.2f}"


def cmd_taxonomy(a: argparse.Namespace) -> int:
    """``specscope taxonomy RUN RUN...``: label each consecutive transition of a chain of runs (baseline first) and
    print the table, optionally with a scatter figure and a comparison report. Returns the exit code, 0."""
    from ..analysis.lens import taxonomy
    from ..store.reader import open_run

    chain = [open_run(p) for p in a.runs]
    if len(chain) < 2:
        raise ConfigError("taxonomy needs a chain of at least two runs (baseline first)")
    names = [p.rstrip("/").split("/")[-1] for p in a.runs]
    try:
        table = taxonomy(chain, a.target, names=names)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"target loss {a.target}" if a.target is not None else "each transition at the loosest loss both runs reached")
    _print_table(table, TAXONOMY_COLUMNS)
    if a.figure:
        from ..report.lens_figures import taxonomy_scatter

        Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
        taxonomy_scatter(table).savefig(a.figure, dpi=110)
        print(f"figure: {a.figure}")
    if a.report:
        from ..report.compare import write_comparison

        print(f"report: {write_comparison(chain, a.report, target=a.target, chain=True, names=names)}")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    """``specscope sweep CONFIG``: run a successive-halving sweep (Ray, or ``--local``), print its table and the
    winners per tier. Returns the exit code, 0."""
    from ..experiments.sweep import SweepConfig, run_sweep

    cfg = SweepConfig.load(a.config)
    out = a.out or fresh_dir(f"runs/sweep-{cfg.name}")
    table = run_sweep(cfg, out, executor="local" if a.local else "ray", address=a.address, cpus_per_trial=a.cpus_per_trial,
                      progress=not a.no_progress)
    _print_table(table.drop(columns=["group"]), None)
    best = table[(table["rung"] == table["rung"].max()) & table["promoted"]]
    print("winners per tier: " + ", ".join(f"B={int(r.batch)} lr={r.lr:.3g} (val {r.val_loss:.3f})" for r in best.itertuples()))
    print(f"sweep table: {Path(out) / 'sweep.csv'}  trials: {Path(out) / 'trials'}  (specscope forecast {Path(out) / 'trials'} ...)")
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    """``specscope prune PATH``: measure each block's importance and compare the spectral, Last-N and random pruning
    rules on held-out sequences; print the tables (``--json``) and keep them beside a run directory. Returns the
    exit code, 0."""
    import torch

    from ..experiments.pruning import pruning_study, summarize_comparison
    from ..train.load import load_model

    _check_prunable(a.path)
    model, family = load_model(a.path)
    seqs = _prune_sequences(a, model, family)
    ks = a.k  # a list of ints >= 1 (args.positive_int_list), or None
    torch.manual_seed(0)
    importance, comparison, verdict = pruning_study(model, seqs, ks=ks, metric=a.metric, random_seeds=a.random_seeds,
                                                    keep_first=not a.allow_first)
    summary = summarize_comparison(comparison)
    saved = _save_pruning(a.path, importance, summary, verdict)
    if a.json:
        from ..store.artifacts import jsonable

        print(json.dumps({"importance": json.loads(importance.to_json(orient="records")),
                          "comparison": json.loads(summary.to_json(orient="records")),
                          "verdict": jsonable(verdict)}, indent=1))
        return 0
    print(verdict["direction"])
    _print_table(importance)
    print()
    _print_table(summary)
    print(verdict["verdict"])
    if saved:
        print(f"saved beside the run: {saved} (shown by `specscope findings` and `specscope report`)")
    return 0


def _check_prunable(path: str) -> None:
    """A run directory that cannot be pruned gets one line saying why: no transformer blocks, or no checkpoints."""
    from ..analysis.coverage import contents
    from ..errors import UnsupportedModelError
    from ..models.loading import step_checkpoints
    from ..store.reader import is_run_dir, open_run

    p = Path(path)
    if not (p.is_dir() and is_run_dir(p)) or (p / "config.json").is_file():
        return
    have = contents(open_run(p))
    why = have.blocks("layer importance needs block skipping") if have.weight_steps else None
    if why:
        raise UnsupportedModelError(f"{p}: {why}; specscope prune runs the reference GPT or an HF causal LM")
    if not step_checkpoints(p) and not any(p.glob("*.safetensors")):
        raise UnsupportedModelError(f"{p}: the run kept no checkpoints, and prune needs the model: train with --ckpt-every N, "
                                    "or pass a reference-GPT safetensors checkpoint or an HF model directory")


def _save_pruning(path: str, importance, summary, verdict) -> Path | None:
    """When ``path`` is a run directory, keep the results there for `findings` and the report."""
    from ..store.artifacts import save_artifact
    from ..store.reader import is_run_dir

    p = Path(path)
    if not (p.is_dir() and is_run_dir(p)):
        return None
    return save_artifact(p, "pruning", {"importance": importance, "summary": summary}, verdict)


def _prune_sequences(a: argparse.Namespace, model, family: str):
    """Held-out sequences: the stdlib probe split, tokenized for the model (its own tokenizer for HF directories)."""
    import numpy as np
    import torch

    from ..probes import make_pool
    from ..train.corpus import load_corpus, megabytes

    n_ctx = getattr(getattr(model, "cfg", None), "seq_len", None) or getattr(model.config, "n_positions", None) or \
        getattr(model.config, "max_position_embeddings", 1024)
    seq_len = min(a.seq_len, n_ctx)
    if family == "reference":
        corpus = load_corpus("stdlib", max_bytes=megabytes(a.max_corpus_mb))
        return make_pool(corpus.probe, n=a.sequences, seq_len=seq_len, seed=1)
    from ..train.corpus import read_documents, stdlib_root

    docs = read_documents(stdlib_root(), stdlib=True, max_bytes=megabytes(a.max_corpus_mb))["probe"]
    text = b"".join(docs).decode("utf-8")
    vocab = model.config.vocab_size
    ids: list[int] = []
    if any((Path(a.path) / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(a.path, local_files_only=True)(text)["input_ids"]
    if len(ids) <= seq_len or max(ids) >= vocab:  # no usable tokenizer: bytes folded into the vocabulary
        logging.getLogger(__name__).warning("no usable tokenizer in %s: byte tokens modulo the vocabulary", a.path)
        ids = (np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) % vocab).tolist()
    return make_pool(np.asarray(ids), n=a.sequences, seq_len=seq_len, seed=1).to(torch.long)


def register(sub) -> None:
    """Add this group's subcommands to the ``specscope`` parser's subparsers ``sub``."""
    ex = sub.add_parser("experiment", help="built-in experiments: grokking, sosd (schedules / weight decay / Muon), "
                                           "lifecycle (compression waves, alpha depth profiles and pruning at depths 4 / 6), lens (token efficiency across batch sizes), "
                                           "taxonomy (baseline -> RoPE -> Muon -> untied)")
    ex.add_argument("name", choices=["grokking", "sosd", "lifecycle", "lens", "taxonomy"])
    ex.add_argument("--target", type=A.finite_float, default=None,
                    help="lens / taxonomy: validation loss target (default: the loosest every run reached)")
    ex.add_argument("--tokens", type=A.positive_int, default=None, help="lens / taxonomy: training tokens per run")
    ex.add_argument("--family", choices=["toy", "stdlib"], default="toy",
                    help="lens: the paper's cyclic-shift batch sweep (toy, Fig. 4a) or the reference GPT on the stdlib corpus")
    ex.add_argument("--sweep", action="store_true", help="lens --family stdlib: pick each tier's learning rate by successive halving first")
    ex.add_argument("--local", action="store_true", help="lens --sweep: run the trials in this process, without Ray")
    ex.add_argument("--chain", default=None, help="taxonomy: comma-separated cumulative stages, e.g. baseline,rope,muon,untied,softcap")
    ex.add_argument("--quick", action="store_true", help="a tiny configuration (for tests)")
    ex.add_argument("--steps", type=A.positive_int, default=None)
    ex.add_argument("--seeds", type=A.positive_int, default=None,
                    help="number of seeds (0..N-1) of every run: the claims report mean and spread over them")
    ex.add_argument("--p", type=A.int_at_least(2), default=None, help="modulus")
    ex.add_argument("--task", choices=["add", "dyck1"], default="add", help="grokking: modular addition or Dyck-1")
    ex.add_argument("--out", type=A.out_dir, default=None)
    ex.add_argument("--no-progress", action="store_true")
    ex.set_defaults(func=cmd_experiment)
    f = sub.add_parser("findings", help="the SPEC section 5 analyses a run's data allows: tables and verdicts")
    f.add_argument("runs", nargs="+", type=A.existing_path)
    f.add_argument("--json", action="store_true")
    f.add_argument("--metric", default="alpha_tail", help="alpha of the depth profile (alpha_tail, alpha_mle, ...)")
    f.add_argument("--max-rows", type=A.positive_int, default=20)
    f.set_defaults(func=cmd_findings)
    pr = sub.add_parser("prune", help="layer importance and pruning: spectral rule vs Last-N vs random (delta perplexity)")
    pr.add_argument("path", type=A.existing_path,
                    help="a run directory or safetensors checkpoint of the reference GPT, or an HF model directory")
    pr.add_argument("--k", type=A.positive_int_list, default=None, help="comma-separated numbers of blocks to remove (default 1..L/2)")
    pr.add_argument("--metric", default="alpha_tail",
                    help="the spectral rule's exponent: a rank-decay one (alpha_sv, alpha_tail, ...: lowest removed first) "
                         "or an ESD one (alpha_mle, alpha_weighted: highest removed first)")
    pr.add_argument("--sequences", type=A.positive_int, default=64, help="held-out sequences (stdlib probe split)")
    pr.add_argument("--seq-len", type=A.int_at_least(2), default=128)
    pr.add_argument("--random-seeds", type=A.nonneg_int, default=20,
                    help="random prunings averaged, drawn from the spectral rule's candidates")
    pr.add_argument("--allow-first", action="store_true", help="let the spectral rule remove block 0")
    pr.add_argument("--max-corpus-mb", type=A.positive_float, default=8.0)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prune)
    fc = sub.add_parser("forecast", help="rank batch sizes by early activation alpha_tail (flatter = fewer tokens to target)")
    fc.add_argument("runs", nargs="+", type=A.existing_path,
                    help="runs of one or more families (differing only in batch size), roots holding them, "
                         "or a sweep's output directory (its winners)")
    fc.add_argument("--target", type=A.finite_float, default=None,
                    help="validation loss target for T(B), eps_tok and rho (default: the loosest every run reached; "
                         "a run that never reaches it is censored)")
    fc.add_argument("--window", type=_rank_window, default=None,
                    help="tail window A:B (1-based ranks; default: chosen by the model's width, SPEC 3)")
    fc.add_argument("--budget", type=A.positive_float, default=None, help="early token budget (default: --budget-frac of the median T)")
    fc.add_argument("--budget-frac", type=A.fraction, default=0.2)
    fc.add_argument("--json", action="store_true")
    fc.add_argument("--report", type=A.out_file, default=None, help="also write an HTML report here")
    fc.set_defaults(func=cmd_forecast)
    tx = sub.add_parser("taxonomy", help="intervention taxonomy of a chain of runs (baseline -> variant -> ...)")
    tx.add_argument("runs", nargs="+", type=A.existing_path)
    tx.add_argument("--target", type=A.finite_float, default=None,
                    help="validation loss target (matched loss; default: the loosest every run reached)")
    tx.add_argument("--figure", type=A.out_file, default=None, help="write the token-gain vs throughput-gain scatter here (PNG)")
    tx.add_argument("--report", type=A.out_file, default=None, help="also write an HTML report here")
    tx.set_defaults(func=cmd_taxonomy)
    sw = sub.add_parser("sweep", help="batch tiers x learning rates, filtered by synchronized successive halving, on Ray Tune")
    sw.add_argument("config", type=A.existing_file, help="sweep config (TOML or JSON; see specscope.experiments.sweep)")
    sw.add_argument("--out", type=A.out_dir, default=None)
    sw.add_argument("--address", default=None, help="a Ray cluster address (default: a local Ray)")
    sw.add_argument("--local", action="store_true", help="run the trials in this process, without Ray")
    sw.add_argument("--cpus-per-trial", type=A.positive_float, default=1.0)
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(func=cmd_sweep)
