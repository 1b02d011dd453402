"""The layering of DESIGN.md, read from the code: every import (module level or inside a function)
points to the same layer or one below; no module is past 500 lines; every public name is documented."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "specscope"

# top to bottom: a module may import from its own layer and the layers below it, never above
LAYERS = [
    ("cli",),
    ("experiments",),
    ("train",),
    ("report", "export"),
    ("analysis",),
    ("integrations",),
    ("monitor", "probes", "measure", "offline", "raysetup", "sinks"),
    ("store",),
    ("streams",),
    ("models",),
    ("spectra",),
    ("errors", "numbers", "progress"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out.append((".".join(["specscope", *parts]), path))
    return out


def _layer(module: str) -> str | None:
    """The top-level room of ``specscope.X.Y`` (``X``), or None for the package root and ``__main__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every ``specscope`` import in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, t) for t in names if t.startswith("specscope")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("specscope")]
    return found


def test_layer_table_covers_every_room():
    rooms = {p.name if p.is_dir() else p.stem for p in SRC.iterdir() if not p.name.startswith("__")}
    rooms.discard("py.typed")
    assert rooms <= set(RANK), f"rooms missing from the layer table: {sorted(rooms - set(RANK))}"


def test_the_import_checker_sees_relative_imports():
    """The checker itself, on a known answer: ``from ..models import x`` in ``specscope/probes/base.py``."""
    got = _imports("specscope.probes.base", SRC / "probes" / "base.py")
    assert any(t.startswith("specscope.models") for _, t in got)


def test_imports_point_down():
    upward = []
    for module, path in _modules():
        src = _layer(module)
        if src is None:
            continue
        for line, target in _imports(module, path):
            dst = _layer(target)
            if dst is not None and RANK[dst] < RANK[src]:
                upward.append(f"{path.relative_to(SRC)}:{line} ({src}) imports {target} ({dst})")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_no_module_past_500_lines():
    long = [f"{p.relative_to(SRC)}: {n}" for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500]
    assert not long, long


def _public(obj_module: str) -> list[tuple[str, object]]:
    mod = importlib.import_module(obj_module)
    names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(mod, n)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == obj_module:
            out.append((n, obj))
    return out


@pytest.mark.parametrize("module", [m for m, _ in _modules() if not m.endswith("__main__")])
def test_public_names_have_docstrings(module):
    missing = []
    for name, obj in _public(module):
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for meth, fn in vars(obj).items():
                if meth.startswith("_") or not inspect.isfunction(fn):
                    continue
                if not (fn.__doc__ or "").strip() and not any((getattr(b, meth, None).__doc__ or "").strip()
                                                             for b in obj.__mro__[1:] if hasattr(b, meth)):
                    missing.append(f"{name}.{meth}")
    assert not missing, f"{module}: public names without a docstring: {missing}"
