"""Progress of a long loop: a tqdm bar when stderr is a terminal; otherwise (a log file, CI, a pipe) a plain line on
stderr every 10% of the work or every 30 s, whichever comes first, and one at the end."""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

EVERY_FRACTION = 0.1  # a plain line each time another 10% of the total is done
EVERY_SECONDS = 30.0  # ... or when this long has passed since the last line


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stderr) is an interactive terminal: a bool (False when it cannot tell)."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class LineProgress:
    """The plain-line counterpart of a tqdm bar (``update``, ``set_postfix``, ``close``, a context manager): writes
    ``desc: n/total unit (pct%), elapsed s, key=value ...`` to ``stream`` every :data:`EVERY_FRACTION` of ``total``
    or :data:`EVERY_SECONDS` seconds, and at :meth:`close` when progress was made since the last line."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, stream: TextIO | None = None,
                 every_s: float = EVERY_SECONDS):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = sys.stderr if stream is None else stream
        self.every_s = every_s
        self.postfix: dict[str, Any] = {}
        self.t0 = self._last_t = time.monotonic()
        self._last_n = initial
        self._closed = False

    def _line(self) -> None:
        now = time.monotonic()
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done} {self.unit}{pct}, {now - self.t0:.0f} s{extra}", file=self.stream, flush=True)
        self._last_t, self._last_n = now, self.n

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; writes a line when another 10% is done or 30 s passed. Returns nothing."""
        self.n += n
        step = max(1, int(self.total * EVERY_FRACTION)) if self.total else None
        crossed = step is not None and self.n // step > self._last_n // step
        if crossed or time.monotonic() - self._last_t >= self.every_s:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next lines (as tqdm's postfix). Returns nothing."""
        self.postfix = values

    def close(self) -> None:
        """Write the last line (when anything was done since the previous one); idempotent. Returns nothing."""
        if not self._closed and self.n != self._last_n:
            self._line()
        self._closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent:
    """No progress at all (``enabled=False``): the same methods, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0,
        stream: TextIO | None = None):
    """A progress reporter for ``total`` units (``update``, ``set_postfix``, ``close``; a context manager): a tqdm bar
    on stderr when it is a terminal, a :class:`LineProgress` writing plain lines otherwise (to ``stream``, default
    stderr), nothing when ``enabled`` is False."""
    if not enabled:
        return _Silent()
    if on_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=stream)
    return LineProgress(total, desc, unit, initial, stream)


def track(items: Iterable[T], desc: str, unit: str = "it", enabled: bool = True, total: int | None = None,
          stream: TextIO | None = None) -> Iterator[T]:
    """Yield each of ``items``, counting them on a :func:`bar` (``total``: default ``len(items)`` when it has one).
    An iterator over the same items."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit, enabled, stream=stream) as b:
        for item in items:
            yield item
            b.update(1)
