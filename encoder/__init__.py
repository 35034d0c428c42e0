"""Text encoders: real transformer model and a deterministic fake for tests."""

from __future__ import annotations

from pathlib import Path

from encoder.base import Encoder, EncoderError
from encoder.fake import HashingEncoder
from encoder.transformer import TransformerEncoder

__all__ = ["Encoder", "EncoderError", "HashingEncoder", "TransformerEncoder", "load_encoder"]


def load_encoder(path: str | None, device: str = "auto", kind: str = "transformer",
                 dtype: str = "auto", trace: bool = False) -> Encoder:
    """Build an encoder by kind: "transformer" (real model) or "hashing" (test fake).

    A fine-tuned directory (with ``profiles_model.json``) is verified first: weights sha256,
    format and fingerprint; any problem is a one-line EncoderError.  ``dtype``: fp32, bf16 or
    auto (``encoder.transformer.resolve_dtype``); the hashing fake ignores it.  ``trace``: run
    the transformer as a TorchScript trace on CPU (inference only: the worker's encoder).
    """
    if kind == "transformer":
        if path is None:
            return TransformerEncoder(None, device=device, dtype=dtype, trace=trace)
        from encoder.metadata import check_loaded, read_metadata, verify_weights

        if not Path(path).is_dir():
            raise EncoderError(f"encoder path {path} is not a directory")
        meta = read_metadata(path)  # None: a plain model folder (no profiles metadata)
        if meta is None:
            return TransformerEncoder(path, device=device, dtype=dtype, trace=trace)
        verify_weights(path, meta)
        enc = TransformerEncoder(path, device=device, max_length=int(meta.get("max_length", 256)),
                                 dtype=dtype, trace=trace)
        check_loaded(path, meta, enc.model_fingerprint)  # the weights; .fingerprint adds the dtype
        enc.metadata = meta
        return enc
    if kind == "hashing":
        return HashingEncoder()
    raise EncoderError(f"unknown encoder kind {kind!r}; expected 'transformer' or 'hashing'")
