"""The ``specscope`` parser and entry point. Bad input gets one clear line and exit code 2."""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import SpecscopeError
from . import experiments, export, runs

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
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
