"""The ``specscope`` parser and entry point. Bad input gets one clear line and exit code 2."""
from __future__ import annotations

import argparse
import copy
import logging
import sys

from ..errors import SpecscopeError
from . import experiments, export, live, runs

EXIT_USAGE = 2


def _shown(default) -> bool:
    """True for a default worth printing in ``--help`` (not None, a flag's False, an empty list or SUPPRESS)."""
    return not (default is None or default is False or default is argparse.SUPPRESS or (isinstance(default, list) and not default))


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every option's default: ``(default: X)`` after its help, or as its help when it has none
    (flags that default to off, options without a default and help that already names its default are left as they
    are)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not _shown(action.default) or "default" in text:
            return text
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings and _shown(action.default) and action.nargs != 0:
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # every subcommand's parser too (add_subparsers(parser_class=_Parser))
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, not usage + traceback
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``specscope`` argument parser (an ``argparse.ArgumentParser``): one subcommand per command, registered by
    each command group; each subcommand's ``func`` default is the function that runs it."""
    p = _Parser(prog="specscope", description="Watch the spectra of a neural network while it trains.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    runs.register(sub)
    experiments.register(sub)
    live.register(sub)
    export.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command (``argv``: the arguments, default ``sys.argv[1:]``) and return its exit code: 0 on success and
    for ``--help``, 2 for bad input (an argparse error or any :class:`SpecscopeError`, one line on stderr), 130 when
    interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0), or one error line (2, see _Parser.error); returned, not raised
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SpecscopeError as exc:
        print(f"specscope: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("specscope: interrupted; everything flushed so far is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
