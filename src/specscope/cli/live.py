"""Commands that follow a live run: ``watch``."""
from __future__ import annotations

import argparse

from . import args as A


def cmd_watch(a: argparse.Namespace) -> int:
    """``specscope watch RUN``: a terminal dashboard of the run's latest numbers, refreshed every ``--interval``
    seconds until the run is finished (``--once``: one frame). Returns the exit code, 0."""
    from ..report.live import watch

    watch(a.run, interval=a.interval, once=a.once)
    return 0


def register(sub) -> None:
    """Add this group's subcommands to the ``specscope`` parser's subparsers ``sub``."""
    w = sub.add_parser("watch", help="a live terminal view of a run's latest metrics, refreshed while it writes")
    w.add_argument("run", type=A.existing_path, help="run directory")
    w.add_argument("--interval", type=A.positive_float, default=2.0, help="seconds between reads of the run store")
    w.add_argument("--once", action="store_true", help="show one frame and exit")
    w.set_defaults(func=cmd_watch)
