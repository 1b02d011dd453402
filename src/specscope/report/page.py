"""One HTML page of the report: sections in order, each figure inline as SVG (text kept as text), optionally each
figure also written as a PNG / PDF / SVG file beside the page. A figure that cannot be drawn becomes one line saying
why, never an error."""
from __future__ import annotations

import html
import io
import logging
import re
from pathlib import Path
from typing import Callable, Union

from matplotlib.figure import Figure

from ..errors import ConfigError
from ..store.writer import atomic_write_bytes

log = logging.getLogger(__name__)

FIGURE_FORMATS = ("png", "pdf", "svg")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1500px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
img,svg{max-width:100%;height:auto}svg text{font-family:'DejaVu Sans',Verdana,Arial,sans-serif}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f7f7f7}
table.facts th,table.facts td{text-align:left}.note{color:#666;font-size:.85rem}.missing{color:#8a5a00}code{background:#f4f4f4;padding:0 .2rem}
"""

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_LONG_NUMBER = re.compile(r"-?\d+\.\d{3,}")
_BETWEEN_TAGS = re.compile(r">\s+<")
_PLAIN_ID = re.compile(r' id="[A-Za-z][A-Za-z0-9.]*_\d+"')
_FONT_FAMILY = re.compile(r"font-family: [^;\"]*(; )?")
Drawable = Union[Figure, Callable[[], "Figure | None"], None]


def svg(fig: Figure) -> str:
    """``fig`` as an inline ``<svg>`` element (text as text, no XML prolog): a str."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "path.simplify_threshold": 0.5}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    text = _FONT_FAMILY.sub("", _COMMENT.sub("", text[text.index("<svg"):]))  # the page's CSS names the font once
    text = _LONG_NUMBER.sub(lambda m: f"{float(m.group()):.4g}", text)  # 4 significant digits: < 0.1 pt on a page
    text = _PLAIN_ID.sub("", text)  # ids nothing refers to (references go to hashed ids: #m..., #p...)
    return _BETWEEN_TAGS.sub("><", text).replace(" \n", " ")


def slug(title: str) -> str:
    """A file-name-safe version of ``title`` (lower case, runs of other characters as ``-``, at most 60): a str."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "figure"


class Page:
    """An HTML document being assembled. ``title``: the page's title and heading. ``figures_dir`` / ``figures_format``
    (one of :data:`FIGURE_FORMATS`): also save each figure there as ``NN-<section>.<format>``."""

    def __init__(self, title: str, figures_dir: Path | None = None, figures_format: str | None = None):
        if figures_format is not None and figures_format not in FIGURE_FORMATS:
            raise ConfigError(f"figures format must be one of {', '.join(FIGURE_FORMATS)}, got {figures_format!r}")
        self.title = title
        self.parts: list[str] = []
        self.figures_dir = Path(figures_dir) if figures_dir is not None and figures_format else None
        self.figures_format = figures_format
        self.written: list[Path] = []  # figure files written so far

    def add(self, markup: str) -> None:
        """Append raw HTML ``markup`` (already escaped by the caller); returns nothing."""
        self.parts.append(markup)

    def heading(self, title: str, markup: str = "") -> None:
        """Append an ``<h2>`` section holding ``markup`` (a table, a note); returns nothing."""
        self.parts.append(f"<section><h2>{html.escape(title)}</h2>{markup}</section>")

    def section(self, title: str, fig: Drawable, note: str = "", missing: str | None = None) -> None:
        """Append a titled figure with its ``note`` (HTML); ``fig`` is a Figure, or a function drawing one (called
        here). Without a figure, or when drawing it fails, one line saying what the run lacks (``missing``) or why
        the figure could not be drawn. Returns nothing."""
        body = None
        try:
            if callable(fig) and not isinstance(fig, Figure):
                fig = fig()
            body = svg(fig) if fig is not None else None
        except Exception as exc:  # a report says what it cannot draw; it never fails on one figure
            log.warning("report: %s: could not draw the figure: %s: %s", title, type(exc).__name__, exc)
            missing = f"could not draw this figure: {type(exc).__name__}: {exc}"
        head = f"<h2>{html.escape(title)}</h2>"
        if body is None:
            self.parts.append(f'<section>{head}<p class="note missing">{html.escape(missing or "No data for this figure.")}'
                              "</p></section>")
            return
        self.parts.append(f"<section>{head}" + (f"<p class=note>{note}</p>" if note else "")
                          + f'<figure role="img" aria-label="{html.escape(title)}">{body}</figure></section>')
        if self.figures_dir is not None:
            self.figures_dir.mkdir(parents=True, exist_ok=True)
            path = self.figures_dir / f"{len(self.written) + 1:02d}-{slug(title)}.{self.figures_format}"
            fig.savefig(path, format=self.figures_format, dpi=110)
            self.written.append(path)

    def html(self) -> str:
        """The whole self-contained document: a str."""
        return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
                f"<title>specscope · {html.escape(self.title)}</title><style>{CSS}</style></head><body>"
                f"<h1>specscope · {html.escape(self.title)}</h1>" + "".join(self.parts) + "</body></html>")


def figures_dir_for(path: Path) -> Path:
    """Where the figure files of the report at ``path`` go: ``<stem>_figures`` beside it. A Path."""
    return path.parent / f"{path.stem}_figures"


def write_html(out, render: Callable[[Path], str]) -> Path:
    """Write ``render(figures_dir)`` (a document; ``figures_dir``: :func:`figures_dir_for` the output) to ``out``
    atomically, parent directories created. Returns the written path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render(figures_dir_for(path)).encode("utf-8"))
    return path
