"""Bad input: one line on stderr, exit code 2, no traceback, nothing written; probes and configs refuse bad arguments."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specscope.cli import main
from specscope.errors import ConfigError, SpecscopeError
from specscope.probes import Activations, Gradients, Trajectory, Weights, make_pool
from specscope.spectra import singular_values, singular_values_many
from specscope.spectra.compute import _group_svals, singular_values_lowmem, singular_values_streamed
from specscope.train import GPTConfig, TrainConfig

# Placeholders: {file} an existing file, {full} a non-empty directory, {empty} an empty directory,
# {new} a path that does not exist (and must not exist afterwards), {missing} another absent path.
BAD_LINES: list[tuple[str, list[str]]] = [
    ("heads-0", ["train", "--heads", "0", "--out", "{new}"]),
    ("heads-not-dividing", ["train", "--heads", "3", "--width", "128", "--out", "{new}"]),
    ("rope-odd-head-dim", ["train", "--positions", "rope", "--heads", "2", "--width", "6", "--out", "{new}"]),
    ("seq-len-0", ["train", "--seq-len", "0", "--out", "{new}"]),
    ("seq-len-1", ["train", "--seq-len", "1", "--out", "{new}"]),
    ("layers-0", ["train", "--layers", "0", "--out", "{new}"]),
    ("width-negative", ["train", "--width", "-5", "--out", "{new}"]),
    ("lr-nan", ["train", "--lr", "nan", "--out", "{new}"]),
    ("lr-inf", ["train", "--lr", "inf", "--out", "{new}"]),
    ("lr-0", ["train", "--lr", "0", "--out", "{new}"]),
    ("lr-text", ["train", "--lr", "fast", "--out", "{new}"]),
    ("muon-lr-negative", ["train", "--muon-lr", "-0.1", "--out", "{new}"]),
    ("probe-every-negative", ["train", "--probe-every", "-1", "--out", "{new}"]),
    ("eval-every-negative", ["train", "--eval-every", "-3", "--out", "{new}"]),
    ("ckpt-every-negative", ["train", "--ckpt-every", "-1", "--out", "{new}"]),
    ("warmup-negative", ["train", "--warmup", "-1", "--out", "{new}"]),
    ("steps-0", ["train", "--steps", "0", "--out", "{new}"]),
    ("steps-float", ["train", "--steps", "1.5", "--out", "{new}"]),
    ("batch-0", ["train", "--batch", "0", "--out", "{new}"]),
    ("accum-0", ["train", "--accum", "0", "--out", "{new}"]),
    ("weight-decay-negative", ["train", "--weight-decay", "-1", "--out", "{new}"]),
    ("softcap-nan", ["train", "--softcap", "nan", "--out", "{new}"]),
    ("max-corpus-mb-0", ["train", "--max-corpus-mb", "0", "--out", "{new}"]),
    ("decay-on-unknown", ["train", "--decay-on", "hidden,bogus", "--out", "{new}"]),
    ("device-unknown", ["train", "--device", "banana", "--out", "{new}"]),
    ("device-cuda-index", ["train", "--device", "cuda:99", "--out", "{new}"]),
    ("corpus-missing", ["train", "--corpus", "{missing}", "--out", "{new}"]),
    ("spectral-warmup-missing", ["train", "--spectral-warmup", "{missing}", "--out", "{new}"]),
    ("out-existing-file", ["train", "--out", "{file}"]),
    ("out-non-empty-dir", ["train", "--out", "{full}"]),
    ("out-under-a-file", ["train", "--out", "{file}/run"]),
    ("unknown-flag", ["train", "--no-such-flag", "--out", "{new}"]),
    ("demo-heads-0", ["demo", "--heads", "0", "--out", "{new}"]),
    ("analyze-missing", ["analyze", "{missing}", "--format", "csv", "--out", "{new}"]),
    ("analyze-into-file", ["analyze", "{file}", "--into", "{file}"]),
    ("analyze-out-dir", ["analyze", "{file}", "--format", "csv", "--out", "{full}"]),
    ("analyze-kinds-typo", ["analyze", "{file}", "--kinds", "q,typo", "--format", "csv", "--out", "{new}"]),
    ("analyze-method", ["analyze", "{file}", "--method", "qr"]),
    ("analyze-trajectory-negative", ["analyze", "{empty}", "--trajectory", "-1"]),
    ("analyze-trajectory-1", ["analyze", "{empty}", "--trajectory", "1", "--into", "{new}"]),
    ("analyze-sketch-alone", ["analyze", "{file}", "--sketch", "16", "--into", "{new}"]),
    ("analyze-matrix-form", ["analyze", "{empty}", "--trajectory", "3", "--matrix", "q"]),
    ("analyze-format-without-out", ["analyze", "{file}", "--format", "csv"]),
    ("analyze-out-with-table", ["analyze", "{file}", "--out", "{new}"]),
    ("analyze-max-rows-0", ["analyze", "{file}", "--max-rows", "0"]),
    ("report-missing", ["report", "{missing}"]),
    ("report-out-dir", ["report", "{empty}", "--out", "{full}"]),
    ("report-out-two-runs", ["report", "{empty}", "{full}", "--out", "{new}"]),
    ("findings-missing", ["findings", "{missing}"]),
    ("findings-max-rows-0", ["findings", "{empty}", "--max-rows", "0"]),
    ("query-runs-missing", ["query", "select 1", "--runs", "{missing}"]),
    ("query-max-rows-negative", ["query", "select 1", "--runs", "{empty}", "--max-rows", "-1"]),
    ("experiment-unknown", ["experiment", "nope", "--out", "{new}"]),
    ("experiment-steps-0", ["experiment", "grokking", "--steps", "0", "--out", "{new}"]),
    ("experiment-out-file", ["experiment", "grokking", "--quick", "--out", "{file}"]),
    ("experiment-target-nan", ["experiment", "lens", "--target", "nan", "--out", "{new}"]),
    ("experiment-p-1", ["experiment", "grokking", "--p", "1", "--out", "{new}"]),
    ("experiment-seeds-0", ["experiment", "grokking", "--seeds", "0", "--out", "{new}"]),
    ("forecast-no-target", ["forecast", "{empty}"]),
    ("forecast-budget-frac", ["forecast", "{empty}", "--budget-frac", "2"]),
    ("forecast-budget-negative", ["forecast", "{empty}", "--budget", "-1"]),
    ("forecast-report-dir", ["forecast", "{empty}", "--target", "3", "--report", "{full}"]),
    ("forecast-report-needs-target", ["forecast", "{empty}", "--budget", "10", "--report", "{new}"]),
    ("prune-missing", ["prune", "{missing}"]),
    ("prune-k-0", ["prune", "{file}", "--k", "0"]),
    ("prune-k-text", ["prune", "{file}", "--k", "a,b"]),
    ("prune-sequences-0", ["prune", "{file}", "--sequences", "0"]),
    ("prune-seq-len-1", ["prune", "{file}", "--seq-len", "1"]),
    ("taxonomy-target-inf", ["taxonomy", "{empty}", "{full}", "--target", "inf"]),
    ("taxonomy-figure-dir", ["taxonomy", "{empty}", "{full}", "--figure", "{full}"]),
    ("sweep-config-missing", ["sweep", "{missing}", "--out", "{new}"]),
    ("sweep-config-dir", ["sweep", "{full}", "--out", "{new}"]),
    ("sweep-cpus-0", ["sweep", "{file}", "--cpus-per-trial", "0", "--out", "{new}"]),
    ("sweep-out-file", ["sweep", "{file}", "--out", "{file}"]),
    ("no-command", ["bogus"]),
]
if not torch.cuda.is_available():
    BAD_LINES.append(("device-cuda-on-cpu", ["train", "--device", "cuda", "--out", "{new}"]))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``specscope.cli.main(argv)`` in this process: (exit code, stderr)."""
    code = main(argv)  # argparse errors are returned too, not raised
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv", [a for _, a in BAD_LINES], ids=[i for i, _ in BAD_LINES])
def test_bad_command_line_is_one_line_and_exit_2(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output directory (runs/...) would land here
    (tmp_path / "file.txt").write_text("not a model")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "empty").mkdir()
    paths = {"file": tmp_path / "file.txt", "full": tmp_path / "full", "empty": tmp_path / "empty",
             "new": tmp_path / "new", "missing": tmp_path / "missing"}
    code, err = run_cli([a.format(**paths) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].strip(), err
    assert "Traceback" not in err
    assert not paths["new"].exists() and not paths["missing"].exists() and not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt", "full"]
    assert [p.name for p in paths["full"].iterdir()] == ["x"] and not any(paths["empty"].iterdir())


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, SpecscopeError) and issubclass(ConfigError, ValueError)


POOL = torch.randint(0, 16, (8, 6))
BAD_PROBES = {
    "every-negative": lambda: Weights(every=-1),
    "every-float": lambda: Weights(every=2.5),
    "every-bool": lambda: Weights(every=True),
    "at-negative": lambda: Weights(at=[5, -1]),
    "at-string": lambda: Weights(at="10"),
    "at-float": lambda: Weights(at=[1.5]),
    "name-empty": lambda: Weights(name=""),
    "weights-kind-typo": lambda: Weights(kinds=["typo"]),
    "weights-kinds-string": lambda: Weights(kinds="q"),
    "weights-method": lambda: Weights(method="qr"),
    "weights-scale-0": lambda: Weights(scale=0),
    "trajectory-window-1": lambda: Trajectory(window=1),
    "trajectory-k-0": lambda: Trajectory(mode="sketch", k=0),
    "trajectory-mode": lambda: Trajectory(mode="approx"),
    "trajectory-kind": lambda: Trajectory(kinds=["qq"]),
    "trajectory-matrix-kind": lambda: Trajectory(matrices=[(0, "qq")]),
    "trajectory-matrix-layer": lambda: Trajectory(matrices=[(-1, "q")]),
    "trajectory-matrix-form": lambda: Trajectory(matrices=["0:q"]),
    "trajectory-store-dtype": lambda: Trajectory(store_dtype=torch.int8),
    "activations-batch-0": lambda: Activations(POOL, batch=0),
    "activations-normalize": lambda: Activations(POOL, normalize="l2"),
    "activations-layers-and-modules": lambda: Activations(POOL, layers=[0], modules=["blocks.0"]),
    "activations-layers-not-ints": lambda: Activations(POOL, layers=["0"]),
    "activations-feature-dim": lambda: Activations(POOL, feature_dim="last"),
    "activations-forward-fn": lambda: Activations(POOL, forward_fn=3),
    "activations-every": lambda: Activations(POOL, every=-5),
    "gradients-batch-0": lambda: Gradients(POOL, batch=0),
    "gradients-chunk-0": lambda: Gradients(POOL, chunk=0),
    "gradients-samples-0": lambda: Gradients(POOL, samples=0),
    "gradients-method": lambda: Gradients(POOL, method="magic"),
    "gradients-matrix-kind": lambda: Gradients(POOL, matrix="attn"),
    "gradients-layer": lambda: Gradients(POOL, layer="last"),
    "gradients-part": lambda: Gradients(POOL, part=-1),
    "gradients-loss-fn": lambda: Gradients(POOL, loss_fn="ce"),
    "pool-corpus-too-short": lambda: make_pool(np.arange(10), seq_len=16),
}


@pytest.mark.parametrize("make", list(BAD_PROBES.values()), ids=list(BAD_PROBES))
def test_bad_probe_argument_is_a_config_error(make):
    with pytest.raises(ConfigError) as info:
        make()
    assert isinstance(info.value, ValueError) and str(info.value)


def test_good_probe_arguments_still_work():
    assert Weights(every=0, at=[0, 10]).due(10) and not Weights(every=0, at=[0]).due(5)  # every=0: only `at`
    assert Weights(kinds=["q", "k"], method="svd", scale=64).kinds == {"q", "k"}
    assert Trajectory(window=2, mode="sketch", k=1, kinds=("q",), matrices=[(0, "q")]).matrices == [(0, "q")]
    assert Activations(POOL, layers=[np.int64(0)], batch=1).batch == 1
    assert Gradients(POOL, matrix_name="anything", samples=4, chunk=1).chunk == 1


BAD_CONFIGS = {
    "n_head-0": lambda: GPTConfig(n_head=0),
    "n_head-not-dividing": lambda: GPTConfig(n_head=3, d_model=128),
    "seq_len-1": lambda: GPTConfig(seq_len=1),
    "n_layer-0": lambda: GPTConfig(n_layer=0),
    "softcap-nan": lambda: GPTConfig(softcap=math.nan),
    "dropout-1": lambda: GPTConfig(dropout=1.0),
    "lr-nan": lambda: TrainConfig(lr=math.nan),
    "lr-0": lambda: TrainConfig(lr=0.0),
    "steps-0": lambda: TrainConfig(steps=0),
    "probe_every-negative": lambda: TrainConfig(probe_every=-1),
    "micro_batch-0": lambda: TrainConfig(micro_batch=0),
    "weight_decay-inf": lambda: TrainConfig(weight_decay=math.inf),
}


@pytest.mark.parametrize("make", list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_bad_train_config_is_a_config_error(make):
    with pytest.raises(ConfigError):
        make()


def _matrix() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((20, 30))


@pytest.mark.parametrize("factor", [1e200, 1e-200])
def test_huge_and_tiny_finite_entries_get_their_spectrum(factor):
    w = _matrix()
    exact = np.linalg.svd(w, compute_uv=False) * factor
    for spec in (singular_values(w * factor), singular_values_many({"w": torch.tensor(w * factor)})["w"]):
        assert spec.status == "ok"
        np.testing.assert_allclose(spec.sv, exact, rtol=1e-9)


def test_batched_gram_scales_each_matrix_of_a_group():
    """The GPU path's batched Gram (run here on CPU tensors): each matrix scaled by its own power of two."""
    w = _matrix()
    exact = np.linalg.svd(w, compute_uv=False)
    sv = _group_svals([torch.tensor(w * 1e200), torch.tensor(w), torch.tensor(w * 1e-200)], "gram", None)
    for row, factor in zip(sv, (1e200, 1.0, 1e-200)):
        np.testing.assert_allclose(row, exact * factor, rtol=1e-9)


def test_streamed_gram_overflow_says_entries_too_large():
    w = torch.tensor(_matrix() * 1e200)
    for spec in (singular_values_lowmem(w), singular_values_streamed(lambda r0, r1, c0, c1: w.T[r0:r1, c0:c1], (30, 20))):
        assert spec.status.startswith("entries too large for the float64 Gram (max |w| = ") and "method='svd'" in spec.status
        assert np.isnan(spec.sv).all()
    assert singular_values_lowmem(w, method="svd").status == "ok"


def test_non_finite_entries_still_say_so():
    w = _matrix()
    w[3, 4] = np.nan
    assert singular_values(w).status == "non-finite entries"
    w[3, 4] = np.inf
    assert singular_values(w).status == "non-finite entries"


def test_solver_failure_status_is_readable(monkeypatch):
    def fail(*_a, **_k):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(np.linalg, "eigvalsh", fail)
    spec = singular_values(_matrix())
    assert spec.status == "eigensolver did not converge (LinAlgError); try method='svd'"
    assert np.isnan(spec.sv).all()
