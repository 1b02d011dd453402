"""Run store: append-only, crash-safe Parquet parts, readable while written, DuckDB queries."""
from .reader import Run, find_runs, open_run
from .rows import Measurement, metric_row, spectrum_row
from .writer import RunWriter

__all__ = ["Measurement", "Run", "RunWriter", "find_runs", "metric_row", "open_run", "spectrum_row"]
