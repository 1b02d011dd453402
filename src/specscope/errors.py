"""One error type per failure a user can cause; the CLI turns each into one line and exit 2."""


class SpecscopeError(Exception):
    """Base of every error specscope raises on bad user input."""


class RunNotFoundError(SpecscopeError):
    """A path that should be a run directory is not one."""


class QueryError(SpecscopeError):
    """A SQL query over the run store failed."""


class CorpusError(SpecscopeError):
    """A corpus directory is missing or holds no text."""


class ConfigError(SpecscopeError, ValueError):
    """An option or configuration value is invalid (a ``ValueError`` too, for callers that catch those)."""


class CheckpointError(SpecscopeError):
    """A checkpoint or model path is missing, unreadable, corrupted, or unsafe to load."""


class UnsupportedDtypeError(CheckpointError):
    """A weight matrix is stored in a dtype specscope cannot take spectra of (e.g. int8, float8)."""


class UnsupportedModelError(SpecscopeError):
    """A model lacks what an operation needs (e.g. ``prune`` on a model without transformer blocks)."""
