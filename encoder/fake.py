"""Deterministic hashing encoder for unit tests (no model, no torch)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from encoder.base import check_texts


class HashingEncoder:
    """Hashes words and character trigrams into signed buckets, then L2-normalises.

    Texts sharing words/trigrams get positive cosine similarity, which is enough
    for ranking tests; output is identical across processes (blake2b, not hash()).
    """

    def __init__(self, dim: int = 384) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.fingerprint = f"hashing-{dim}"
        self.name = f"hashing-{dim}"

    def _features(self, text: str) -> list[str]:
        words = text.lower().split()
        feats = [f"w:{w}" for w in words]
        for w in words:
            padded = f" {w} "
            feats.extend(f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2))
        # Empty/whitespace text still needs a unit vector to honour the protocol.
        return feats or ["<empty>"]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for row, text in enumerate(items):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                # Low bit picks the sign so unrelated features cancel on average.
                out[row, (h >> 1) % self.dim] += 1.0 if h & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # A feature set can cancel out exactly; fall back to a fixed unit vector.
        zero = norms[:, 0] == 0
        out[zero, 0] = 1.0
        norms[zero] = 1.0
        out /= norms
        return np.ascontiguousarray(out, dtype=np.float32)
