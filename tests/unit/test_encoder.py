"""Encoder tests: real model reference values, batching invariance, fake encoder."""

from __future__ import annotations

import random

import numpy as np
import pytest

from encoder import EncoderError, HashingEncoder, TransformerEncoder, load_encoder

pytestmark = pytest.mark.unit

# Reference sentences and cosine similarities from the all-MiniLM-L6-v2 model card.
REFERENCE = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


def _texts_of_varied_length() -> list[str]:
    rng = random.Random(7)
    words = ["red", "running", "shoe", "leather", "wallet", "phone", "case"]
    words += ["usb", "cable", "organic", "green", "tea", "mug"]
    texts = ["", "a", "Shoes", "wireless earbuds with charging case"]
    for n in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 400):  # 400 words > 256 tokens
        texts.append(" ".join(rng.choice(words) for _ in range(n)))
        texts.append(" ".join(rng.choice(words) for _ in range(n)).upper() + " !?")
    texts += [f"product title number {i}" for i in range(10)]
    rng.shuffle(texts)
    return texts


def test_reference_similarities(real_encoder: TransformerEncoder) -> None:
    v = real_encoder.encode(REFERENCE)
    sim = v @ v.T
    assert sim[0, 1] == pytest.approx(0.6660, abs=5e-4)
    assert sim[0, 2] == pytest.approx(0.1046, abs=5e-4)
    assert sim[1, 2] == pytest.approx(0.1411, abs=5e-4)


def test_output_contract(real_encoder: TransformerEncoder) -> None:
    v = real_encoder.encode(REFERENCE)
    assert v.shape == (3, real_encoder.dim) == (3, 384)
    assert v.dtype == np.float32 and v.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert len(real_encoder.fingerprint) == 16
    int(real_encoder.fingerprint, 16)


def test_empty_input(real_encoder: TransformerEncoder) -> None:
    v = real_encoder.encode([])
    assert v.shape == (0, 384) and v.dtype == np.float32


def test_single_string_rejected(real_encoder: TransformerEncoder) -> None:
    with pytest.raises(TypeError):
        real_encoder.encode("not a list")  # type: ignore[arg-type]


def test_batched_equals_one_by_one(real_encoder: TransformerEncoder) -> None:
    texts = _texts_of_varied_length()
    assert len(texts) >= 40
    # Small budgets force many uneven batches; results must not depend on batching.
    small = TransformerEncoder(device="cpu", max_batch=7, max_tokens=600, dtype="fp32")
    batched = small.encode(texts)
    default = real_encoder.encode(texts)
    single = np.vstack([real_encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(default, single, atol=1e-5)
    assert small.fingerprint == real_encoder.fingerprint


def test_batches_respect_budgets(real_encoder: TransformerEncoder) -> None:
    enc = TransformerEncoder.__new__(TransformerEncoder)
    enc.max_batch, enc.max_tokens = 4, 100
    lengths = [10, 50, 3, 3, 3, 3, 3, 3, 30, 7]
    batches = enc._batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4
        assert max(lengths[i] for i in b) * len(b) <= 100


def test_bad_path_is_one_line_error(tmp_path) -> None:
    with pytest.raises(EncoderError) as info:
        TransformerEncoder(str(tmp_path / "missing"), device="cpu")
    msg = str(info.value)
    assert "\n" not in msg and "config.json" in msg


def test_corrupt_model_is_one_line_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(EncoderError) as info:
        TransformerEncoder(str(tmp_path), device="cpu")
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is not None


def test_hashing_encoder_deterministic_and_normalised() -> None:
    texts = ["red running shoes", "red running shoe", "", "   ", "coffee mug"]
    a, b = HashingEncoder(64).encode(texts), HashingEncoder(64).encode(texts)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 64) and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert a[0] @ a[1] > a[0] @ a[4]  # shared trigrams => closer
    assert HashingEncoder(64).encode([]).shape == (0, 64)
    assert HashingEncoder(64).fingerprint == "hashing-64"


def test_load_encoder_kinds() -> None:
    assert isinstance(load_encoder(None, kind="hashing"), HashingEncoder)
    with pytest.raises(EncoderError):
        load_encoder(None, kind="nope")
