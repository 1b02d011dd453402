"""Tables of the run store and their Arrow schemas."""
from __future__ import annotations

import pyarrow as pa

_KEY = [
    ("run_id", pa.string()),
    ("step", pa.int64()),
    ("tokens", pa.int64()),
]
_WHERE = [
    ("probe", pa.string()),
    ("layer", pa.int32()),
    ("kind", pa.string()),
    ("name", pa.string()),
    ("part", pa.int32()),  # expert / gate index where a matrix is one of several; -1 (or null in old runs) otherwise
]

SCHEMAS: dict[str, pa.Schema] = {
    # one scalar metric of one measured object (matrix, activation layer, ...)
    "metrics": pa.schema(_KEY + _WHERE + [("metric", pa.string()), ("value", pa.float64()), ("status", pa.string())]),
    # full spectra: `quantity` says what `values` hold ("sv": singular values, "eig": eigenvalues)
    "spectra": pa.schema(_KEY + _WHERE + [("quantity", pa.string()), ("values", pa.list_(pa.float64())), ("status", pa.string())]),
    # training scalars: loss, val_loss, lr, tokens_per_s, ...
    "scalars": pa.schema(_KEY + [("name", pa.string()), ("value", pa.float64()), ("wall_time", pa.float64())]),
}
TABLES = tuple(SCHEMAS)
META_FILE = "meta.json"
