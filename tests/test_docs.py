"""The API page generator (docs/make_api.py) covers the public surface: every name the docstring test in
test_layers.py checks has an entry on the page, every top-level name links to one, and the output is
deterministic. The committed docs/api.md is not compared byte for byte (docstrings change with the code;
`make docs` regenerates it)."""
from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from test_layers import _modules, _public

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def make_api():
    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def page(make_api) -> str:
    return make_api.render()


def _anchors(page: str) -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', page))


def test_every_name_the_docstring_test_sees_is_on_the_page(page):
    anchors = _anchors(page)
    missing = []
    for module, _ in _modules():
        if module.endswith("__main__"):
            continue
        if module not in anchors:
            missing.append(module)
        for name, obj in _public(module):
            if f"{module}.{name}" not in anchors:
                missing.append(f"{module}.{name}")
            if inspect.isclass(obj):
                missing += [f"{module}.{name}.{m}" for m, fn in vars(obj).items()
                            if not m.startswith("_") and inspect.isfunction(fn) and f"{module}.{name}.{m}" not in anchors]
    assert not missing, f"public names without an entry on the API page: {missing}"


def test_every_link_on_the_page_has_its_anchor(page):
    anchors = _anchors(page)
    links = set(re.findall(r"\]\(#([^)]+)\)", page))
    assert links, "the page links nothing"
    assert links <= anchors, f"links to missing anchors: {sorted(links - anchors)}"


def test_top_level_names_link_to_their_entries(page):
    import specscope

    top = page.split('<a id="specscope.monitor"></a>')[0]
    for name in specscope._LAZY:
        assert f"[`specscope.{name}`](#" in top, name


def test_an_entry_shows_signature_and_docstring(make_api, page):
    """A known answer: ``open_run``'s entry holds its signature with unquoted annotations, and its docstring."""
    import specscope.store.reader as reader

    entry = page.split('<a id="specscope.store.reader.open_run"></a>')[1].split("<a id=")[0]
    assert "open_run(run_dir: str | os.PathLike) -> Run" in entry
    assert make_api.doc_text(reader.open_run) in entry
    assert "works while the run is still being written" in entry
    method = page.split('<a id="specscope.store.reader.Run.metrics"></a>')[1].split("<a id=")[0]
    assert "Run.metrics(probe: str | None = None, metric: str | None = None, kind: str | None = None) -> pd.DataFrame" in method


def test_sphinx_roles_become_code_spans(make_api):
    def f():
        """See :func:`~specscope.store.reader.open_run` and :class:`specscope.Monitor`."""

    assert make_api.doc_text(f) == "See `open_run` and `specscope.Monitor`."


def test_output_is_deterministic(make_api, page):
    assert make_api.render() == page
    assert not re.search(r" at 0x[0-9a-fA-F]+", page)


def test_the_page_is_committed():
    assert (ROOT / "docs" / "api.md").is_file(), "run `make docs` and commit docs/api.md"
