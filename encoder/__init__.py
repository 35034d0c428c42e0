"""Text encoders: real transformer model and a deterministic fake for tests."""

from __future__ import annotations

from encoder.base import Encoder, EncoderError
from encoder.fake import HashingEncoder
from encoder.transformer import TransformerEncoder

__all__ = ["Encoder", "EncoderError", "HashingEncoder", "TransformerEncoder", "load_encoder"]


def load_encoder(path: str | None, device: str = "auto", kind: str = "transformer") -> Encoder:
    """Build an encoder by kind: "transformer" (real model) or "hashing" (test fake)."""
    if kind == "transformer":
        return TransformerEncoder(path, device=device)
    if kind == "hashing":
        return HashingEncoder()
    raise EncoderError(f"unknown encoder kind {kind!r}; expected 'transformer' or 'hashing'")
