"""Matrix catalog: (layer, kind) for each architecture family."""
from .catalog import BLOCK_KINDS, KINDS, MatrixRef, catalog, classify

__all__ = ["BLOCK_KINDS", "KINDS", "MatrixRef", "catalog", "classify"]
