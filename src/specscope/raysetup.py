"""Ray, started or joined once per process, for everything that fans out on it (offline analysis, sweeps).

Ray is imported here, on the first call, never at import time.
"""
from __future__ import annotations

import logging

from .errors import ConfigError


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """The ``ray`` module, initialized: joined to the cluster at ``address`` (``"local"`` or None: a local Ray
    with ``num_cpus`` CPUs, None: all of this machine's), or as it is when this process already started one.
    Raises :class:`ConfigError` when the ``ray`` package is not installed or Ray cannot start or be reached."""
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray fan-out needs the ray package: pip install 'ray[tune]'") from None
    if not ray.is_initialized():
        local = address in (None, "local")
        try:
            ray.init(address=address, num_cpus=num_cpus if local else None, include_dashboard=False,
                     ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            where = "a local Ray" if local else f"the Ray cluster at {address}"
            raise ConfigError(f"cannot start or join {where}: {(str(exc).splitlines() or [''])[0]}") from None
    return ray
