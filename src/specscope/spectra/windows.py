"""Rank windows for the band-restricted exponent (SPEC section 3, "Tail window")."""
from __future__ import annotations

# Spectral Lens' bank, selected by model scale (hidden width): d=768 -> first, 1280 -> second, 1600 -> third.
SCALE_BANK: tuple[tuple[int, tuple[int, int]], ...] = (
    (1600, (400, 800)),
    (1280, (200, 400)),
    (768, (100, 200)),
)
# For models too narrow for the scale bank.
TOY_BANK: tuple[tuple[int, int], ...] = ((10, 40), (40, 90), (90, 200))
HEAD_WINDOW: tuple[int, int] = (1, 10)
# A clipped bank window must keep at least this many ranks to be reported.
MIN_WINDOW_RANKS = 20


def clip_window(window: tuple[int, int], r: int) -> tuple[int, int] | None:
    """``window`` (1-based inclusive ranks ``(a, b)``) with ``b`` clipped to the spectrum length ``r``, or None when
    what is left starts before rank 1 or holds fewer than 2 ranks."""
    a, b = window
    b = min(b, r)
    if a < 1 or b - a + 1 < 2:
        return None
    return (a, b)


def tail_window(r: int, scale: int | None = None) -> tuple[int, int] | None:
    """The tail window ``(a, b)`` (1-based inclusive ranks) for a spectrum of length ``r`` from a model of width
    ``scale``, or None when no window fits.

    Widths of at least 768 take the Spectral Lens bank entry for the largest width they
    reach (when it fits in ``r``). Narrower models take the deepest toy-bank window that
    fits whole inside the spectrum (the paper finds the deepest window the most
    informative; a window cut by the end of the spectrum would sit on the finite-size edge,
    where every spectrum falls steeply); if none fits, the first window clipped to ``r``.
    ``scale`` defaults to ``r``.
    """
    d = r if scale is None else scale
    for width, win in SCALE_BANK:
        if d >= width and r >= win[1]:
            return win
    for win in reversed(TOY_BANK):
        if win[1] <= r:
            return win
    return clip_window(TOY_BANK[0], r)


def bank_windows(r: int) -> list[tuple[int, int]]:
    """Every bank window (toy and scale) that fits, clipped, in a spectrum of length ``r`` and keeps at least
    ``MIN_WINDOW_RANKS`` ranks: a list of ``(a, b)`` rank pairs (1-based, inclusive), without repeats, toy bank first."""
    wins = [clip_window(w, r) for w in TOY_BANK] + [w for _, w in SCALE_BANK if w[1] <= r]
    seen: list[tuple[int, int]] = []
    for w in wins:
        if w is not None and w not in seen and w[1] - w[0] + 1 >= MIN_WINDOW_RANKS:
            seen.append(w)
    return seen


def window_name(window: tuple[int, int]) -> str:
    """The metric name of the rank-decay exponent over ``window``: ``"alpha_rank[a:b]"``."""
    return f"alpha_rank[{window[0]}:{window[1]}]"
