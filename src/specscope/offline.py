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
from .models.loading import Checkpoint, Stream, resolve
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


def _bar(total: int, progress: bool, desc: str, unit: str = "matrix"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)


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


def _measure(model_or_path, method: str, kinds: Iterable[str] | None, progress: bool) -> tuple[list[_Measured], bool]:
    keep = set(kinds) if kinds is not None else None
    if isinstance(model_or_path, nn.Module):
        refs = [r for r in catalog(model_or_path) if keep is None or r.kind in keep]
        with torch.no_grad():  # in memory already: all matrices at once, side by side on the cores
            spectra = singular_values_many([(r.name, r.read()) for r in refs], method=method)
        return [_Measured(None, r, spectra[r.name].sv, spectra[r.name].status) for r in refs], False
    ckpts = resolve(model_or_path)
    series = len(ckpts) > 1
    cats = [{r.name: r for r in c.catalog() if keep is None or r.kind in keep} for c in ckpts]
    final = cats[-1]
    out = []
    total = sum(len(c) for c in cats)
    with torch.no_grad(), _bar(total, progress, "analyze") as bar:
        for name, ref_final in final.items():
            end = _Final(ckpts[-1], ref_final) if series else None
            for ck, cat in zip(ckpts, cats):
                ref = cat.get(name)
                if ref is None:
                    continue
                out.append(_measure_one(ck, ref, method, end))
                ck.release()
                bar.update(1)
            del end
            for ck in ckpts:
                ck.release()
        for ck, cat in zip(ckpts, cats):  # matrices only in earlier checkpoints
            for name, ref in cat.items():
                if name not in final:
                    out.append(_measure_one(ck, ref, method, None))
                    bar.update(1)
            ck.release()
    return out, series


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


def analyze(model_or_path, method: str = "gram", kinds: Iterable[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """SPEC section 3 metrics of every cataloged matrix of a model or checkpoint.

    ``model_or_path``: an ``nn.Module``, an HF model directory, a safetensors file, a torch
    checkpoint (``weights_only=True``), or a directory of step-numbered checkpoints (then one
    row per checkpoint x matrix, with ``step`` and the SPEC section 4 metrics
    ``sd_variation``, ``cos_sd_final``, ``cos_w_final``, ``compression``).
    """
    measured, series = _measure(model_or_path, method, kinds, progress)
    return _frame(measured, series)


def analyze_into(model_or_path, run_dir: str | os.PathLike, method: str = "gram", kinds: Iterable[str] | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """:func:`analyze`, and write metrics and full spectra into a run store (probe ``weights``),
    so ``report`` and the analyses work on it."""
    from .store.rows import Measurement
    from .store.writer import RunWriter

    measured, series = _measure(model_or_path, method, kinds, progress)
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
        with torch.no_grad(), _bar(len(ckpts), progress, "trajectory", "checkpoint") as bar:
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
