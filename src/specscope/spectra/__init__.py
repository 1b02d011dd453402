"""Pure math on tensors: spectra, normalizations, metrics, power-law fits.

Knows nothing of ``nn.Module``.
"""
from __future__ import annotations

import numpy as np
import torch

from .compute import Spectrum, desc_eigvalsh, singular_values, singular_values_lowmem, singular_values_many, sv_from_eig
from .metrics import MetricTable, spectrum_metrics
from .powerlaw import alpha_rank, head_tail_knee, rank_fit
from .temporal import (compression, cos_sd_final, cos_w_final, cosine, eigen_distribution, js_divergence, sd_variation,
                       series_metrics, singular_distribution)
from .windows import tail_window

__all__ = [
    "Spectrum", "desc_eigvalsh", "singular_values", "singular_values_lowmem", "singular_values_many", "sv_from_eig",
    "MetricTable", "spectrum_metrics",
    "alpha_rank", "head_tail_knee", "rank_fit", "compression", "cos_sd_final", "cos_w_final", "cosine",
    "eigen_distribution", "js_divergence",
    "sd_variation", "series_metrics", "singular_distribution", "tail_window", "describe", "Description",
]


class Description(dict):
    """What :func:`describe` returns: a plain dict of metric name -> float (and ``"status"``), shown in a notebook as
    a two-column table of the metrics at 4 significant digits (``_repr_html_``)."""

    def _repr_html_(self) -> str:
        """The metrics as an HTML table (name, value at 4 significant digits), the status last; an HTML string."""
        import html

        from ..numbers import sig

        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{sig(v) if k != 'status' else html.escape(str(v))}</td>"
                       "</tr>" for k, v in self.items())
        return f"<table><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>{rows}</tbody></table>"


def describe(x, spectrum: str = "sv", scale: int | None = None, method: str = "gram") -> dict:
    """SPEC section 3 metrics of one matrix or one spectrum, as a flat dict.

    ``x`` is a 2-D matrix (tensor or array), or a 1-D spectrum: singular values
    (``spectrum="sv"``, default) or eigenvalues (``spectrum="eig"``, e.g. a covariance
    spectrum; their square roots are taken as singular values). ``scale`` (model width)
    selects the tail window; ``method`` is the singular-value method for a matrix. The dict (a
    :class:`Description`, shown as a table in a notebook)
    maps each metric name of :func:`spectrum_metrics` (``stable_rank``, ``alpha_tail``, ...)
    to a Python float (dimensionless, except ``spectral_norm`` in the units of the singular
    values, ``frob_sq`` and ``xmin`` in their square, and ``kstar``, ``k95``,
    ``head_tail_knee`` in ranks) and ``"status"`` to ``"ok"`` or the reasons some metrics
    are NaN. Never raises on NaN/Inf input; raises ValueError on other shapes or an unknown
    ``spectrum``.
    """
    arr = x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 2:
        spec = singular_values(arr, method=method)
        sv, status = spec.sv, spec.status
    elif arr.ndim == 1:
        v = np.asarray(arr, dtype=np.float64)
        if spectrum == "eig":
            v = sv_from_eig(v) if np.isfinite(v).all() else np.full(len(v), np.nan)
        elif spectrum != "sv":
            raise ValueError("spectrum must be 'sv' or 'eig'")
        sv, status = -np.sort(-v), "ok" if np.isfinite(v).all() else "non-finite spectrum"
    else:
        raise ValueError(f"describe takes a matrix or a 1-D spectrum, got {arr.ndim} dims")
    table = spectrum_metrics(sv[None, :], scale=scale)
    out = Description()
    reasons = [] if status == "ok" else [status]
    for name, (val, st) in table.row(0).items():
        out[name] = val
        if st != "ok" and st not in reasons:
            reasons.append(st)
    out["status"] = "ok" if not reasons else "; ".join(reasons)
    return out
