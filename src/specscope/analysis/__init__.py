"""Phenomena: read a run, return tables and verdicts. Never touches a live model."""
from .timeseries import across_time

__all__ = ["across_time"]
