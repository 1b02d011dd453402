"""Argument types of the ``specscope`` command line: each one checks a value before any work starts.

Every helper is an ``argparse`` ``type=``: it returns the parsed value or raises
:class:`argparse.ArgumentTypeError`, which the parser turns into one line and exit code 2.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def int_at_least(low: int) -> Callable[[str], int]:
    """An ``argparse`` type that accepts an integer ``>= low``: a function from the argument's text to the int."""

    def parse(text: str) -> int:
        n = _int(text)
        if n < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return n

    parse.__name__ = f"int>={low}"
    parse.__doc__ = f"An integer ``>= {low}``: the parsed int, or ArgumentTypeError."
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def finite_float(text: str) -> float:
    """Any finite number (not nan, not inf): the parsed float."""
    return _float(text)


def positive_float(text: str) -> float:
    """A finite number ``> 0``: the parsed float."""
    x = _float(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return x


def nonneg_float(text: str) -> float:
    """A finite number ``>= 0``: the parsed float."""
    x = _float(text)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return x


def fraction(text: str) -> float:
    """A number in ``(0, 1]``: the parsed float."""
    x = _float(text)
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return x


def positive_int_list(text: str) -> list[int]:
    """Comma-separated integers ``>= 1`` (e.g. ``1,2,4``): a list of ints, in the order given."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return [positive_int(p) for p in parts]


def kinds_list(text: str) -> list[str]:
    """Comma-separated matrix kinds, each one of :data:`specscope.models.KINDS`: a list of kind names."""
    from ..models.kinds import KINDS

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown) or repr(text)}; kinds are {', '.join(KINDS)}")
    return kinds


def device(text: str) -> str:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:N``, ``mps``): the text unchanged."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {text!r} (cpu, cuda, cuda:N, mps)")
    return text


def existing_path(text: str) -> str:
    """A file or directory that exists: the path text unchanged."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory")
    return text


def existing_file(text: str) -> str:
    """A file that exists: the path text unchanged."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: {'is a directory, not a file' if Path(text).is_dir() else 'no such file'}")
    return text


def _parent_ok(p: Path) -> None:
    """No ancestor of ``p`` may be an existing file (the directory could never be created)."""
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{p}: {parent} is a file, not a directory")
            return


def out_dir(text: str) -> str:
    """A directory to write into: absent (created later) or an existing directory, never an existing file; the path
    text unchanged."""
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file; a directory is expected here")
    _parent_ok(p)
    return text


def new_dir(text: str) -> str:
    """A directory to create: absent, or an existing empty directory; the path text unchanged."""
    out_dir(text)
    p = Path(text)
    if p.is_dir() and any(p.iterdir()):
        raise argparse.ArgumentTypeError(f"{text} is not empty; pass a new directory")
    return text


def out_file(text: str) -> str:
    """A file to write: absent or an existing file (replaced), never an existing directory; the path text unchanged."""
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; a file name is expected here")
    _parent_ok(p)
    return text


def corpus(text: str) -> str:
    """``stdlib`` or an existing directory of text files: the text unchanged."""
    if text != "stdlib" and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: expected 'stdlib' or a directory of text files")
    return text


def fresh_dir(base: str) -> str:
    """A default output directory, not an ``argparse`` type: ``base``, or the first free ``base-2``, ``base-3``...
    when ``base`` already holds files. Returns the path text; creates nothing."""
    p = Path(base)
    if not p.exists() or not any(p.iterdir()):
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return f"{base}-{i}"
