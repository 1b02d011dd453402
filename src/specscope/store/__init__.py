"""Run store: append-only, crash-safe Parquet parts, readable while written, DuckDB queries."""
from .reader import Run, find_runs, open_run
from .writer import RunWriter

__all__ = ["Run", "RunWriter", "find_runs", "open_run"]
