"""Offline analysis of a model, a checkpoint, or a series of checkpoints (``ss.analyze``).

One matrix at a time. From a safetensors file, a matrix that is a strided view of its stored
tensor (a whole tensor, a range of rows, one expert of a packed stack, a transposed
``Conv1D``, a convolution's kernel positions) is never read whole: its blocks are read with
``pread`` into one reused buffer and added into the float64 Gram of its short side, whose
eigenvalues LAPACK then takes in place. Memory above the process's while a spectrum is
computed: the Gram (``8 r^2`` bytes, ``r = min(d_out, d_in)``: at most 2x a float32 matrix,
4x a square float16 / bfloat16 one; only its lower triangle is ever touched, so about half
of it becomes resident) plus one block (about 2 MiB as stored, 4 MiB in float64). Other
matrices (splits that are copies, such as NeoX's interleaved ``qkv``; torch files, which are
memory-mapped with ``weights_only=True``) are read whole: their stored tensor, the Gram and
one block. For a series, ``cos_w_final`` pairs the current and final matrices block by
block when both are streamed (no more memory); else the final tensor is held while its name
is measured across the checkpoints (two tensors).
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .models import KINDS, MatrixRef, catalog
from .models.loading import Checkpoint, Stream, open_checkpoint, resolve
from .progress import bar as progress_bar
from .spectra import series_metrics, singular_values_lowmem, singular_values_many, spectrum_metrics
from .spectra.compute import BLOCK_ELEMS, singular_values_streamed
from .spectra.temporal import cos_w_final

log = logging.getLogger(__name__)

ID_COLUMNS = ["step", "name", "layer", "kind", "part", "d_out", "d_in", "slices"]


@dataclass
class _Measured:
    step: int | None
    ref: MatrixRef
    sv: np.ndarray
    status: str
    cos_w_final: float = float("nan")


class _Final:
    """The final checkpoint's version of one matrix, for ``cos_w_final``: a stream, or the tensor (read once)."""

    def __init__(self, ck: Checkpoint, ref: MatrixRef) -> None:
        self.ref = ref
        self.stream = ck.stream(ref)
        self._w: torch.Tensor | None = None

    def cosine(self, ref: MatrixRef, stream: Stream | None, w: torch.Tensor | None) -> float:
        """Cosine of the flattened ``ref`` (this checkpoint's) and final matrices; NaN when shaped differently."""
        if (ref.shape, ref.slices) != (self.ref.shape, self.ref.slices):
            return float("nan")
        if stream is not None and self.stream is not None and stream.layout() == self.stream.layout():
            rows = min(1024, max(1, BLOCK_ELEMS // max(1, stream.rows.length)))  # the default blocks of narrow matrices
            return cos_w_final(stream, self.stream, rows=rows)
        if self._w is None:
            self._w = self.ref.read()
        return cos_w_final(ref.read() if w is None else w, self._w)


def _measure_one(ck: Checkpoint, ref: MatrixRef, method: str, final: _Final | None) -> _Measured:
    """Spectrum (and, in a series, ``cos_w_final``) of one cataloged matrix of one checkpoint."""
    stream = ck.stream(ref)
    w = None
    if stream is not None and method == "gram":
        spec = singular_values_streamed(stream.read, stream.shape, stream.slices)
    else:
        w = ref.read()
        spec = singular_values_lowmem(w, method)
    m = _Measured(ck.step, ref, spec.sv, spec.status)
    if final is not None:
        m.cos_w_final = final.cosine(ref, stream, w)
    return m


def _kept(ck: Checkpoint, keep: set[str] | None) -> dict[str, MatrixRef]:
    """The cataloged matrices of ``ck`` of the kinds in ``keep`` (None: all), by name."""
    return {r.name: r for r in ck.catalog() if keep is None or r.kind in keep}


def _order(cats: list[dict[str, MatrixRef]]) -> list[tuple[int, str]]:
    """(checkpoint index, matrix name) in measuring order: each name of the final checkpoint across the series,
    then the matrices only earlier checkpoints have."""
    final = cats[-1]
    out = [(i, name) for name in final for i, cat in enumerate(cats) if name in cat]
    return out + [(i, name) for i, cat in enumerate(cats) for name in cat if name not in final]


def _measure(model_or_path, method: str, kinds: Iterable[str] | None, progress: bool,
             ray: str | bool | None = None) -> tuple[list[_Measured], bool]:
    keep = set(kinds) if kinds is not None else None
    if isinstance(model_or_path, nn.Module):
        if ray:
            raise ConfigError("Ray fan-out takes a path (a checkpoint or a directory of them), not an nn.Module")
        refs = [r for r in catalog(model_or_path) if keep is None or r.kind in keep]
        with torch.no_grad():  # in memory already: all matrices at once, side by side on the cores
            spectra = singular_values_many([(r.name, r.read()) for r in refs], method=method)
        return [_Measured(None, r, spectra[r.name].sv, spectra[r.name].status) for r in refs], False
    ckpts = resolve(model_or_path)
    series = len(ckpts) > 1
    cats = [_kept(c, keep) for c in ckpts]
    if ray:
        got = _fan_out(ckpts, cats, method, keep, progress, ray)
        return [_Measured(ckpts[i].step, cats[i][name], *got[i, name]) for i, name in _order(cats)], series
    out = []
    end = None
    with torch.no_grad(), progress_bar(sum(len(c) for c in cats), "analyze", "matrix", progress) as bar:
        for i, name in _order(cats):
            paired = series and name in cats[-1]
            if end is not None and (not paired or end.ref.name != name):
                end = None  # the previous name's final tensor goes before the next one's is read
                ckpts[-1].release()
            if paired and end is None:
                end = _Final(ckpts[-1], cats[-1][name])
            out.append(_measure_one(ckpts[i], cats[i][name], method, end))
            ckpts[i].release()
            bar.update(1)
    return out, series


def _measure_task(path: str, step: int | None, names: list[str], final: tuple[str, int | None] | None, method: str,
                  keep: set[str] | None) -> list[tuple[str, np.ndarray, str, float]]:
    """One Ray task: ``names`` of the checkpoint at ``path`` measured as the serial path measures them (opened
    here by path, so nothing big is shipped; ``final``: the series' final checkpoint, read for ``cos_w_final``).
    Returns (name, singular values, status, ``cos_w_final``) per name."""
    ck = open_checkpoint(path, step)
    cat = _kept(ck, keep)
    fck = None if final is None else ck if (path, step) == final else open_checkpoint(*final)
    fcat = cat if fck is ck else {} if fck is None else _kept(fck, keep)
    out = []
    with torch.no_grad():
        for name in names:
            end = _Final(fck, fcat[name]) if fck is not None and name in fcat else None
            m = _measure_one(ck, cat[name], method, end)
            out.append((name, m.sv, m.status, m.cos_w_final))
            del end
            for c in (ck, fck):
                if c is not None:
                    c.release()
    return out


def _chunks(cat: dict[str, MatrixRef], k: int) -> list[list[str]]:
    """The names of ``cat`` in at most ``k`` chunks of about equal work (``numel x rank``, the Gram's), largest first."""
    bins: list[list[str]] = [[] for _ in range(max(1, min(k, len(cat))))]
    load = [0] * len(bins)
    for name in sorted(cat, key=lambda n: -cat[n].numel * cat[n].rank):
        j = load.index(min(load))
        bins[j].append(name)
        load[j] += cat[name].numel * cat[name].rank
    return [b for b in bins if b]


def _fan_out(ckpts: list[Checkpoint], cats: list[dict[str, MatrixRef]], method: str, keep: set[str] | None,
             progress: bool, ray: str | bool) -> dict[tuple[int, str], tuple[np.ndarray, str, float]]:
    """(singular values, status, ``cos_w_final``) by (checkpoint index, name), measured by Ray tasks: one per
    checkpoint of a series, or chunks of one checkpoint's matrices, about two tasks per CPU in all. A task
    that fails gives its matrices NaNs and a status saying why."""
    from .raysetup import init_ray

    rt = init_ray("local" if ray is True else ray)
    from ray.exceptions import RayError

    cpus = max(1, int(rt.cluster_resources().get("CPU", 1)))
    final = (str(ckpts[-1].path), ckpts[-1].step) if len(ckpts) > 1 else None
    per = -(-2 * cpus // len(ckpts))  # chunks per checkpoint
    task = rt.remote(num_cpus=1)(_measure_task)
    pending = {task.remote(str(ck.path), ck.step, names, final, method, keep): (i, names)
               for i, (ck, cat) in enumerate(zip(ckpts, cats)) for names in _chunks(cat, per)}
    got = {}
    with progress_bar(len(pending), "analyze", "task", progress) as bar:
        while pending:
            (done,), _ = rt.wait(list(pending), num_returns=1)
            i, names = pending.pop(done)
            try:
                got.update({(i, name): rest for name, *rest in rt.get(done)})
            except RayError as exc:
                cause = getattr(exc, "cause", None) or exc
                why = f"Ray task failed ({type(cause).__name__}: {(str(cause).splitlines() or [''])[0]})"
                got.update({(i, name): (np.full(cats[i][name].rank, np.nan), why, float("nan")) for name in names})
            bar.update(1)
    return got


def _frame(measured: list[_Measured], series: bool) -> pd.DataFrame:
    rows: list[dict] = [{"step": m.step, "name": m.ref.name, "layer": m.ref.layer, "kind": m.ref.kind, "part": m.ref.part,
                         "d_out": m.ref.shape[0], "d_in": m.ref.shape[1], "slices": m.ref.slices} for m in measured]
    if not measured:  # nothing cataloged (the catalog logged why): the columns, no rows
        cols = ID_COLUMNS + ["status"]
        return pd.DataFrame(columns=cols if series else cols[1:])
    statuses: list[list[str]] = [[m.status] if m.status != "ok" else [] for m in measured]
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, m in enumerate(measured):
        by_len[len(m.sv)].append(i)
    for idx in by_len.values():
        table = spectrum_metrics(np.stack([measured[i].sv for i in idx]))
        for metric, vals in table.values.items():
            for j, i in enumerate(idx):
                rows[i][metric] = float(vals[j])
                st = table.status[metric][j]
                if st != "ok" and st not in statuses[i]:
                    statuses[i].append(st)
    for row, st in zip(rows, statuses):
        row["status"] = "ok" if not st else "; ".join(st)
    df = pd.DataFrame(rows)
    df["kind"] = pd.Categorical(df["kind"], categories=list(KINDS), ordered=True)
    if series:
        df["cos_w_final"] = [m.cos_w_final for m in measured]
        df = _add_across_time(df, measured)
        df = df.sort_values(["step", "layer", "kind", "part", "name"], kind="stable")
    else:
        df = df.drop(columns=["step"]).sort_values(["layer", "kind", "part", "name"], kind="stable")
    df["kind"] = df["kind"].astype(str)
    return df.reset_index(drop=True)


ACROSS_TIME = ("sd_variation", "sd_variation_per_step", "cos_sd_final", "compression")


def _add_across_time(df: pd.DataFrame, measured: list[_Measured]) -> pd.DataFrame:
    for col in ACROSS_TIME:
        df[col] = np.nan
    idx_by_name: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(measured):
        idx_by_name[m.ref.name].append(i)
    for idx in idx_by_name.values():
        idx = sorted(idx, key=lambda i: measured[i].step)
        if len({len(measured[i].sv) for i in idx}) != 1:
            continue
        metrics = series_metrics(np.stack([measured[i].sv for i in idx]), np.array([measured[i].step for i in idx], dtype=float))
        for col, vals in metrics.items():
            df.loc[idx, col] = vals
    return df


def analyze(model_or_path, method: str = "gram", kinds: Iterable[str] | None = None, progress: bool = True,
            ray: str | bool | None = None) -> pd.DataFrame:
    """SPEC section 3 metrics of every cataloged matrix of a model or checkpoint.

    ``model_or_path``: an ``nn.Module``, an HF model directory, a safetensors file, a torch
    checkpoint (``weights_only=True``), or a directory of step-numbered checkpoints (then one
    row per checkpoint x matrix, with ``step`` and the SPEC section 4 metrics
    ``sd_variation``, ``cos_sd_final``, ``cos_w_final``, ``compression``).

    ``ray``: None / False measures here, one matrix at a time; True or ``"local"`` fans out on a
    local Ray (all CPUs, or the Ray this process already started), an address on that Ray
    cluster (whose workers must see ``model_or_path`` at the same path). A series goes one task
    per checkpoint, one model in chunks of its matrices; each task opens its file by path. The
    rows are the serial path's; a task that fails gives its matrices NaNs and a status.
    Returns one row per matrix (per checkpoint in a series): ids, metrics, ``status``.
    """
    measured, series = _measure(model_or_path, method, kinds, progress, ray)
    return _frame(measured, series)


def analyze_into(model_or_path, run_dir: str | os.PathLike, method: str = "gram", kinds: Iterable[str] | None = None,
                 progress: bool = True, ray: str | bool | None = None) -> pd.DataFrame:
    """:func:`analyze` (``ray`` as there), and write metrics and full spectra into a run store (probe
    ``weights``), so ``report`` and the analyses work on it. Returns :func:`analyze`'s table."""
    from .store.rows import Measurement
    from .store.writer import RunWriter

    measured, series = _measure(model_or_path, method, kinds, progress, ray)
    df = _frame(measured, series)
    source = str(model_or_path) if not isinstance(model_or_path, nn.Module) else type(model_or_path).__name__
    w = RunWriter(run_dir, config={"source": source, "analyzer": "specscope.analyze", "method": method})
    metric_cols = [c for c in df.columns if c not in ID_COLUMNS + ["status"]]
    rows, specs = defaultdict(list), defaultdict(list)  # by step: one measurement's rows built at a time
    for row in df.to_dict("records"):
        rows[int(row.get("step") or 0)].append(row)
    for m in measured:
        specs[int(m.step or 0)].append(m)
    for step in sorted(set(rows) | set(specs)):
        out = Measurement()
        for row in rows.pop(step, ()):
            for c in metric_cols:
                out.add_metric(row["layer"], row["kind"], row["name"], c, float(row[c]), row["status"], row["part"])
        for m in specs.pop(step, ()):
            out.add_spectrum(m.ref.layer, m.ref.kind, m.ref.name, "sv", m.sv, m.status, m.ref.part)
        w.add_measurement(step, None, "weights", out)
    w.close()
    return df


def trajectory(path: str | os.PathLike, window: int = 8, mode: str = "exact", k: int = 4096,
               kinds: Iterable[str] | None = None, matrices: Iterable[tuple[int, str]] = (), global_track: bool = True,
               run_dir: str | os.PathLike | None = None, seed: int = 0, store_dtype: torch.dtype = torch.float64,
               progress: bool = True) -> pd.DataFrame:
    """Trajectory spectra (SPEC 1.4) over a directory of step-numbered checkpoints.

    The updates are the deltas between consecutive checkpoints; the window slides over them
    exactly as :class:`specscope.probes.Trajectory` slides over training steps (exact updates are kept in
    ``store_dtype``, float64 by default: ``W`` x the hidden parameters x 8 bytes). Returns one row
    per (checkpoint step, track) with the window metrics (``kstar``, ``gap_ratio``, ``ratio[j]``,
    ``k95``, ``stability[j]``...); with ``run_dir``, also writes metrics and window singular
    values into a run store under probe ``trajectory`` (so ``report`` and the edge analysis work on it).
    """
    from .probes.trajectory import build_tracks
    from .store.rows import Measurement

    ckpts = resolve(path)
    if len(ckpts) < 3:
        raise CheckpointError(f"{path}: a trajectory needs at least 3 step-numbered checkpoints, found {len(ckpts)}")
    try:
        tracks = build_tracks(ckpts[0].catalog(), window, mode, k, seed, store_dtype, kinds, matrices,
                              global_track)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    writer = None
    if run_dir is not None:
        from .store.writer import RunWriter

        writer = RunWriter(run_dir, config={"source": str(path), "analyzer": "specscope.trajectory", "window": window,
                                            "mode": mode, "k": k})
    rows = []
    try:
        with torch.no_grad(), progress_bar(len(ckpts), "trajectory", "checkpoint", progress) as bar:
            for ck in ckpts:
                by_name = {r.name: r for r in ck.catalog()}
                out = Measurement()
                for t in tracks:
                    missing = [r.name for r in t.refs if r.name not in by_name]
                    if missing:
                        raise CheckpointError(f"{ck.path}: matrix {missing[0]} is missing (a series must share one architecture)")
                    t.observe([by_name[r.name] for r in t.refs])
                    ck.release()
                    t.measure_into(out)
                for m in out.metrics:
                    rows.append({"step": ck.step, **m})
                if writer is not None:
                    writer.add_measurement(int(ck.step or 0), None, "trajectory", out)
                    writer.flush()
                bar.update(1)
    finally:
        if writer is not None:
            writer.close()
    long = pd.DataFrame(rows)
    wide = long.drop_duplicates(["step", "name", "metric"]).set_index(["step", "name", "layer", "kind", "metric"])["value"]
    return wide.unstack("metric").reset_index().rename_axis(columns=None)
