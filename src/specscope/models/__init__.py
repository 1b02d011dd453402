"""Matrix catalog: ``(layer, kind, part)`` for any architecture, fused / packed splits, unwrapping."""
from .catalog import Catalog, ModelInfo, catalog, catalog_stored, mark_conv1d, normalize_name, unwrap
from .families import Stored
from .kinds import BLOCK_KINDS, KINDS, classify
from .ref import MatrixRef

__all__ = ["BLOCK_KINDS", "KINDS", "Catalog", "MatrixRef", "ModelInfo", "Stored", "catalog", "catalog_stored", "classify",
           "mark_conv1d", "normalize_name", "unwrap"]
