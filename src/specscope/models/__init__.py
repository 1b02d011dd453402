"""Matrix catalog: (layer, kind) for each architecture family, fused splits."""
from .catalog import MatrixRef, catalog, catalog_stored, mark_conv1d
from .families import BLOCK_KINDS, KINDS, Stored, classify

__all__ = ["BLOCK_KINDS", "KINDS", "MatrixRef", "Stored", "catalog", "catalog_stored", "classify", "mark_conv1d"]
