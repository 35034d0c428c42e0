"""Index error types."""


class IndexShapeError(ValueError):
    """Vectors or queries have the wrong shape, dtype or non-finite values."""
