"""Encoder protocol shared by the real transformer encoder and test fakes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from stream.core.errors import EncoderError

__all__ = ["Encoder", "EncoderError", "check_texts"]


@runtime_checkable
class Encoder(Protocol):
    """Maps texts to L2-normalised float32 embeddings."""

    dim: int
    #: Stable id of weights + pooling config; vectors from different fingerprints
    #: must never be mixed in one index.
    fingerprint: str
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return a C-contiguous float32 array [len(texts), dim] with unit-norm rows."""
        ...


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate encode() input; a bare str would silently encode its characters."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("encode() takes a sequence of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"encode() item {i} is {type(t).__name__}, expected str")
    return out
