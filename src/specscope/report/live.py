"""``specscope watch RUN``: a terminal dashboard of a run's latest numbers that refreshes while the run writes.

Each frame reads the run store afresh (readers see every part a live run has flushed): a header
(run id, state, last step, tokens, values and NaN counts), the training scalars (latest value and a
sparkline over the steps) and, per probe and kind of matrix, the median over layers of the headline
metrics at the last measured step, with its sparkline. On a terminal the frame is redrawn in
place (``rich.live``); otherwise a plain frame is printed at each change, so a log file gets one
table per update and no escape codes. Watching stops when the run is finished (its writers
closed), on Ctrl-C, or after one frame with ``once``.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..numbers import sig
from ..store.display import metric_summary, scalar_summary
from ..store.reader import Run, open_run

BLOCKS = "▁▂▃▄▅▆▇█"


def spark(values: Any, width: int = 24) -> str:
    """A text sparkline of ``values`` (NaN skipped; the last ``width`` of them), one block character per value;
    an empty string for fewer than two finite values."""
    ys = np.asarray(values, dtype=float)
    ys = ys[np.isfinite(ys)][-width:]
    if len(ys) < 2:
        return ""
    lo, hi = ys.min(), ys.max()
    idx = np.zeros(len(ys), dtype=int) if hi <= lo else np.round((ys - lo) / (hi - lo) * (len(BLOCKS) - 1)).astype(int)
    return "".join(BLOCKS[i] for i in idx)


def frame(run: Run) -> Any:
    """One frame of the dashboard for ``run`` as it is on disk now: a ``rich`` renderable (a group of a header line
    and two tables)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    meta, metrics, scalars = run.meta, run.metrics(), run.scalars()
    steps = [int(df["step"].max()) for df in (metrics, scalars) if len(df)]
    tokens = scalars["tokens"].dropna() if "tokens" in scalars else []
    state = "finished" if meta.get("closed") else "live"
    bad = int((metrics["status"] != "ok").sum()) if len(metrics) else 0
    head = Text.assemble((f"specscope · {run.run_id} ", "bold"), (f"[{state}] ", "green" if state == "live" else "dim"),
                         f"last step {sig(max(steps)) if steps else '-'}",
                         f" · {sig(tokens.iloc[-1])} tokens" if len(tokens) else "",
                         f" · {sig(len(metrics))} values, {sig(bad)} NaN with a status")
    parts: list[Any] = [head]
    sc = Table(title="training scalars", title_justify="left", expand=False)
    for col in ("scalar", "latest", "at step", "over steps"):
        sc.add_column(col, justify="right" if col in ("latest", "at step") else "left")
    for name, value, step, series in scalar_summary(scalars):
        sc.add_row(name, sig(value), sig(step), spark(series))
    mt = Table(title="probes: median over layers at the last measured step", title_justify="left", expand=False)
    for col in ("probe", "kind", "metric", "median", "layers", "over steps"):
        mt.add_column(col, justify="right" if col in ("median", "layers") else "left")
    for probe, kind, metric, value, layers, series in metric_summary(metrics):
        mt.add_row(probe, kind, metric, sig(value), sig(layers), spark(series))
    parts += [sc if sc.row_count else Text("no training scalars yet", style="dim"),
              mt if mt.row_count else Text("no probe measurements yet", style="dim")]
    return Group(*parts)


def _signature(run: Run) -> tuple:
    """What changes when the run writes: the size and modification time of its files (a tuple)."""
    out = []
    for root, _, files in os.walk(run.dir):
        for f in sorted(files):
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            out.append((f, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def watch(run_dir: str | os.PathLike, interval: float = 2.0, once: bool = False, console: Any = None,
          max_frames: int | None = None) -> int:
    """Show the dashboard of the run at ``run_dir`` until it is finished (or Ctrl-C, or ``once``: one frame;
    ``max_frames``: at most that many frames). ``interval``: seconds between reads. ``console``: a ``rich``
    Console (default: stdout). Returns the number of frames shown."""
    from rich.console import Console
    from rich.live import Live

    run = open_run(run_dir)
    console = console or Console()
    shown, last = 0, None
    live = Live(console=console, auto_refresh=False) if console.is_terminal and not once else None
    try:
        if live is not None:
            live.start()
        while True:
            sig_now = _signature(run)
            if sig_now != last:
                last = sig_now
                view = frame(run)
                if live is not None:
                    live.update(view, refresh=True)
                else:
                    console.print(view)
                shown += 1
            if once or run.meta.get("closed") or (max_frames is not None and shown >= max_frames):
                return shown
            time.sleep(max(0.1, float(interval)))
    except KeyboardInterrupt:
        return shown
    finally:
        if live is not None:
            live.stop()
