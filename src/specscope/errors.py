"""One error type per failure a user can cause; the CLI turns each into one line and exit 2."""


class SpecscopeError(Exception):
    """Base of every error specscope raises on bad user input."""


class RunNotFoundError(SpecscopeError):
    """A path that should be a run directory is not one."""


class QueryError(SpecscopeError):
    """A SQL query over the run store failed."""


class CorpusError(SpecscopeError):
    """A corpus directory is missing or holds no text."""


class ConfigError(SpecscopeError):
    """An option or configuration value is invalid."""
