"""CUDA bf16 encoder agrees with CPU fp32."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_bf16_cuda_matches_cpu_fp32(real_encoder) -> None:
    from encoder import TransformerEncoder

    texts = [
        "The weather is lovely today.",
        "wireless noise cancelling headphones",
        "",
        "organic green tea " * 60,  # long: exercises truncation and the token budget
    ] + [f"product title number {i} with a few extra words" for i in range(50)]
    gpu = TransformerEncoder(device="cuda")
    assert gpu.fingerprint == real_encoder.fingerprint + "-bf16"  # fp32 and bf16 never mix
    a = gpu.encode(texts)
    b = real_encoder.encode(texts)
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    cos = (a * b).sum(axis=1)
    assert cos.min() >= 1 - 2e-2, f"worst cosine {cos.min():.4f}"
