"""The ``specscope`` command line: one parser (:mod:`.main`), one file per command group
(:mod:`.runs`: demo, train, report, query, analyze; :mod:`.experiments`: experiment, findings,
prune, forecast, taxonomy, sweep), argument types in :mod:`.args`."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
