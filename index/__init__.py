"""FAISS-backed vector indexes with string ids."""

from index.errors import IndexShapeError
from index.flat import VectorIndex

__all__ = ["IndexShapeError", "VectorIndex"]
