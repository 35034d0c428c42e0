"""The worker's encoder as a TorchScript trace (``PROFILES_ENCODER_TRACE``): the same vectors,
bit for bit, as the eager model, for every batch shape (padding, truncation, one text, many),
in fp32 and bf16 autocast; the fingerprint does not change; the eager instance is untouched."""

from __future__ import annotations

import numpy as np
import pytest

from encoder import TransformerEncoder, load_encoder
from stream.settings import Settings

pytestmark = pytest.mark.unit

TEXTS = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.",
         "wireless noise cancelling headphones", "x", "",
         "Toy Story (1995) | Animation, Children's, Comedy",
         "organic green tea " * 60]  # long: truncated at 256 tokens


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_trace_gives_the_eager_vectors_bit_for_bit(dtype: str) -> None:
    eager = TransformerEncoder(device="cpu", dtype=dtype)
    traced = TransformerEncoder(device="cpu", dtype=dtype, trace=True)
    assert eager._traced is None and traced._traced is not None
    assert traced.fingerprint == eager.fingerprint
    rng = np.random.default_rng(0)
    shapes = [TEXTS, TEXTS[:1], TEXTS[4:5], TEXTS[:3], TEXTS[::-1], [TEXTS[7], TEXTS[4]]]
    shapes += [[TEXTS[int(i)] for i in rng.integers(0, len(TEXTS), int(k))]
               for k in rng.integers(1, 12, 6)]
    for texts in shapes:  # new shapes after the executor specialised on others, too
        a, b = eager.encode(texts), traced.encode(texts)
        assert a.shape == b.shape
        assert np.array_equal(a, b), (texts, float(np.abs(a - b).max()))


def test_the_worker_traces_by_default_and_the_setting_turns_it_off() -> None:
    assert Settings.from_env({}).encoder_trace is True
    assert Settings.from_env({"PROFILES_ENCODER_TRACE": "0"}).encoder_trace is False
    enc = load_encoder(None, device="cpu", dtype="fp32", trace=True)
    assert isinstance(enc, TransformerEncoder) and enc._traced is not None
    eager = load_encoder(None, device="cpu", dtype="fp32")
    assert isinstance(eager, TransformerEncoder) and eager._traced is None
