"""Write ``docs/api.md``: specscope's public surface, read from the code with ``inspect`` and ``importlib``.

The page opens with the top-level names of ``import specscope`` (its lazy ``_LAZY`` table), then one
section per module of the packages in :data:`PACKAGES` (each package, then its submodules in name order):
the module's docstring, what it re-exports, and each public class and function with its signature and
docstring, classes with their public methods and properties. A public name is one in the module's
``__all__``, or else any name not starting with ``_``, defined in that module (the rule of the
docstring test in ``tests/test_layers.py``). Every entry carries an HTML anchor ``module.name`` (and
``module.Class.method``), so the top-level table links to it.

The output depends only on the code: no dates, no memory addresses, members in ``__all__`` or
definition order. Run from anywhere: ``python docs/make_api.py`` (``make docs``) writes
``docs/api.md``; ``--out FILE`` writes elsewhere, ``--out -`` prints it.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"

# The public modules, in page order; each package is followed by all its submodules.
PACKAGES = [
    "specscope.monitor", "specscope.sinks", "specscope.probes", "specscope.spectra", "specscope.measure", "specscope.streams",
    "specscope.store", "specscope.models", "specscope.offline", "specscope.raysetup", "specscope.analysis",
    "specscope.report", "specscope.export", "specscope.integrations", "specscope.experiments", "specscope.train",
    "specscope.errors", "specscope.numbers", "specscope.progress", "specscope.cli",
]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _role(m: re.Match) -> str:
    """A Sphinx cross-reference as a code span (``~a.b.c``: the last component)."""
    target = m.group(2)
    return f"`{target.rsplit('.', 1)[-1] if m.group(1) else target}`"


def doc_text(obj: object) -> str:
    """The cleaned docstring of ``obj`` (inherited where it has none) as Markdown text, or a note that it has none."""
    doc = inspect.getdoc(obj)
    return _ROLE.sub(_role, doc) if doc else "*(no docstring)*"


class _Source(str):
    """An annotation kept as source text (``from __future__ import annotations``), shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _unquoted(annotation: object) -> object:
    return _Source(annotation) if isinstance(annotation, str) else annotation


def signature(obj: object, drop_first: bool = False) -> str:
    """``obj``'s call signature as text, ``(...)`` where it has none; ``drop_first`` drops ``self`` / ``cls``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=_unquoted(p.annotation)) for p in sig.parameters.values()]
    sig = sig.replace(parameters=params[1:] if drop_first else params, return_annotation=_unquoted(sig.return_annotation))
    return _ADDRESS.sub("", str(sig))


def submodules(name: str) -> list[str]:
    """``name`` and, for a package, every module below it (``__main__`` left out), in name order."""
    mod = importlib.import_module(name)
    out = [name]
    for path in getattr(mod, "__path__", []):
        for child in sorted(Path(path).iterdir()):
            if child.suffix == ".py" and child.stem not in ("__init__", "__main__"):
                out.append(f"{name}.{child.stem}")
            elif child.is_dir() and (child / "__init__.py").is_file():
                out.extend(submodules(f"{name}.{child.name}"))
    return out


def module_names() -> list[str]:
    """Every module on the page, in page order: ``specscope``, then each of :data:`PACKAGES` with its submodules."""
    names = ["specscope"]
    for pkg in PACKAGES:
        names.extend(n for n in submodules(pkg) if n not in names)
    return names


def public_members(mod) -> list[tuple[str, object]]:
    """The public classes and functions defined in ``mod``: ``(name, object)`` in ``__all__`` or definition order."""
    names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
    return [(n, obj) for n in names if (inspect.isfunction(obj := getattr(mod, n, None)) or inspect.isclass(obj))
            and getattr(obj, "__module__", "") == mod.__name__]


def reexports(mod) -> list[tuple[str, str]]:
    """``(name, anchor)`` of the classes and functions in ``mod.__all__`` that are defined in another module."""
    out = []
    for n in getattr(mod, "__all__", None) or []:
        obj = getattr(mod, n, None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ != mod.__name__:
            out.append((n, f"{obj.__module__}.{obj.__name__}"))
    return out


def constants(mod) -> list[tuple[str, str]]:
    """``(name, repr)`` of the plain values in ``mod.__all__`` (not classes, functions or modules)."""
    out = []
    for n in getattr(mod, "__all__", None) or []:
        obj = getattr(mod, n, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj)):
            text = _ADDRESS.sub("", repr(obj))
            out.append((n, text if len(text) <= 200 else text[:197] + "..."))
    return out


def _anchor(ident: str) -> str:
    return f'<a id="{ident}"></a>'


def _entry(level: str, title: str, ident: str, sig: str | None, body: str) -> list[str]:
    lines = [_anchor(ident), "", f"{level} {title}", ""]
    if sig is not None:
        lines += ["```python", sig, "```", ""]
    return lines + [body, ""]


def class_members(cls) -> list[tuple[str, str, object]]:
    """``(name, what, object)`` of the public methods, class / static methods and properties ``cls`` defines."""
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if inspect.isfunction(member):
            out.append((name, "method", member))
        elif isinstance(member, classmethod):
            out.append((name, "classmethod", member.__func__))
        elif isinstance(member, staticmethod):
            out.append((name, "staticmethod", member.__func__))
        elif isinstance(member, property):
            out.append((name, "property", member))
    return out


def render_class(modname: str, name: str, cls) -> list[str]:
    """A class's entry: signature, bases, docstring, then each public member's."""
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    title = f"class `{name}`" + (f" ({', '.join(f'`{b}`' for b in bases)})" if bases else "")
    lines = _entry("###", title, f"{modname}.{name}", f"{name}{signature(cls)}", doc_text(cls))
    for mname, what, member in class_members(cls):
        ident = f"{modname}.{name}.{mname}"
        if what == "property":
            ret = member.fget.__annotations__.get("return") if member.fget else None
            sig = f"{name}.{mname}" + (f" -> {ret}" if isinstance(ret, str) else "")
            lines += _entry("####", f"`{name}.{mname}` *property*", ident, sig, doc_text(member))
        else:
            sig = f"{name}.{mname}{signature(member, drop_first=what != 'staticmethod')}"
            lines += _entry("####", f"`{name}.{mname}`" + ("" if what == "method" else f" *{what}*"), ident, sig,
                            doc_text(member))
    return lines


def render_module(modname: str) -> list[str]:
    """One module's section: docstring, re-exports, values, then its classes and functions."""
    mod = importlib.import_module(modname)
    lines = [_anchor(modname), "", f"## `{modname}`", "", doc_text(mod), ""]
    again = reexports(mod)
    if again:
        lines += ["Re-exports: " + ", ".join(f"[`{n}`](#{a})" for n, a in again) + ".", ""]
    for n, text in constants(mod):
        lines += [f"- `{n} = {text}`"]
    if constants(mod):
        lines.append("")
    for name, obj in public_members(mod):
        if inspect.isclass(obj):
            lines += render_class(modname, name, obj)
        else:
            lines += _entry("###", f"`{name}`", f"{modname}.{name}", f"{name}{signature(obj)}", doc_text(obj))
    return lines


def render_top() -> list[str]:
    """The names ``import specscope`` offers (its lazy table), each linked to its entry."""
    import specscope

    lines = [_anchor("specscope"), "", "## `specscope`", "", doc_text(specscope), "",
             f"`specscope.__version__` is `{specscope.__version__!r}`. Top-level names, each imported on first use:", ""]
    for name, (modname, attr) in sorted(specscope._LAZY.items()):
        if attr is None:
            mod = importlib.import_module(modname)
            first = doc_text(mod).split("\n\n")[0].replace("\n", " ")
            lines.append(f"- [`specscope.{name}`](#{modname}): the module `{modname}`. {first}")
        else:
            obj = getattr(importlib.import_module(modname), attr)
            first = doc_text(obj).split("\n\n")[0].replace("\n", " ")
            lines.append(f"- [`specscope.{name}`](#{obj.__module__}.{obj.__name__}): {first}")
    return lines + [""]


def render() -> str:
    """The whole page as Markdown text (ends with one newline)."""
    names = module_names()
    lines = ["# specscope API reference", "",
             "Generated from the docstrings by `make docs` (`docs/make_api.py`); do not edit by hand. "
             "Units and return values are stated in each docstring; the measured quantities are defined in SPEC.md.",
             "", "Modules: " + ", ".join(f"[`{n}`](#{n})" for n in names) + ".", ""]
    lines += render_top()
    for n in names[1:]:
        lines += render_module(n)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the page (``--out``: a file, ``-`` for stdout; default ``docs/api.md``); returns the exit code, 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT), help="output file, or - for stdout (default docs/api.md)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))  # document this checkout's code, not another installed copy
    text = render()
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
