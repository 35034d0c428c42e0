"""Fine-tuning and the encoder benchmark on CUDA."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_finetune_on_cuda_then_load(tmp_path) -> None:
    from encoder import load_encoder
    from encoder.training.finetune import FinetuneConfig, finetune
    from tests.unit.test_eval import write_log

    ep, ip = write_log(tmp_path, n_users=6, n_items=12, per_user=10)
    cfg = FinetuneConfig(batch_size=16, max_steps=3, eval_every=3, patience=9, device="cuda",
                         keep_best=False)
    meta = finetune(ep, ip, tmp_path / "m", cfg, progress=False)
    assert meta["training"]["device"].startswith("cuda")
    gpu = load_encoder(str(tmp_path / "m"), device="cuda")
    cpu = load_encoder(str(tmp_path / "m"), device="cpu")
    texts = ["Toy Story (1995) | Animation, Children's, Comedy", "GoldenEye (1995) | Action"]
    cos = (gpu.encode(texts) * cpu.encode(texts)).sum(1)
    assert gpu.model_fingerprint == cpu.model_fingerprint == meta["fingerprint"]
    assert gpu.fingerprint == meta["fingerprint"] + "-bf16"  # bf16 vectors are named apart
    assert cos.min() > 0.98


def test_bench_runs_on_cuda() -> None:
    from stream.bench.encoder import bench_encoder

    rows = bench_encoder("cuda", batch_sizes=(1, 64), tokens=(32,), dtypes=("bf16",), seconds=0.1,
                         report=lambda *_: None)
    assert rows and all(r["sentences_per_s"] > 0 and np.isfinite(r["fraction_of_peak"]) for r in rows)
