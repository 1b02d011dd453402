"""Phenomena: read a run, return tables and verdicts. Never touches a live model."""
from .edge import edge_analysis
from .timeseries import across_time

__all__ = ["across_time", "edge_analysis"]
