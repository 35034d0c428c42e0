"""bf16 autocast on CPU (issue 14 point 4): the setting, the dtype resolution, bf16 vs fp32
vectors of the real model, and the fingerprint that keeps fp32 and bf16 vectors apart."""

from __future__ import annotations

import numpy as np
import pytest

from encoder import EncoderError, TransformerEncoder, load_encoder
from encoder import transformer as tr
from stream.core.errors import ConfigError, StateError
from stream.settings import Settings

pytestmark = pytest.mark.unit

# all-MiniLM-L6-v2 model card: documented fp32 cosine similarities of these three sentences.
REFERENCE = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
DOCUMENTED = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}
TITLES = ["Toy Story (1995) | Animation, Children's, Comedy", "GoldenEye (1995) | Action, Adventure, "
          "Thriller", "Four Rooms (1995) | Thriller", "Get Shorty (1995) | Action, Comedy, Drama",
          "Copycat (1995) | Crime, Drama, Thriller", "wireless noise cancelling headphones", "",
          "organic green tea " * 60]  # long: truncated at 256 tokens

NO_BF16 = frozenset({"fpu", "sse2", "avx2", "avx512f", "avx512bw"})


@pytest.fixture(scope="module")
def bf16_encoder() -> TransformerEncoder:
    return TransformerEncoder(device="cpu", dtype="bf16")


def test_setting_defaults_to_auto_and_rejects_other_values_in_one_line() -> None:
    assert Settings.from_env({}).encoder_dtype == "auto"
    assert Settings.from_env({"PROFILES_ENCODER_DTYPE": "bf16"}).encoder_dtype == "bf16"
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"PROFILES_ENCODER_DTYPE": "fp16"})
    assert str(err.value) == "encoder_dtype must be auto, fp32 or bf16, got 'fp16'"


@pytest.mark.parametrize(("dtype", "device", "flags", "want"), [
    ("auto", "cpu", NO_BF16 | {"avx512_bf16"}, "bf16"),
    ("auto", "cpu", NO_BF16 | {"amx_bf16", "amx_tile"}, "bf16"),
    ("auto", "cpu", NO_BF16, "fp32"),
    ("auto", "cpu", frozenset(), "fp32"),  # flags unreadable (not Linux)
    ("auto", "cuda", frozenset(), "bf16"),
    ("fp32", "cpu", NO_BF16 | {"avx512_bf16"}, "fp32"),
    ("fp32", "cuda", frozenset(), "fp32"),
    ("bf16", "cpu", NO_BF16, "bf16"),  # asked for: emulated, slow, but what was asked
])
def test_resolve_dtype(dtype, device, flags, want) -> None:
    assert tr.resolve_dtype(dtype, device, flags) == want


def test_resolve_dtype_rejects_unknown() -> None:
    with pytest.raises(EncoderError, match="encoder dtype must be one of auto, fp32, bf16, got 'fp16'"):
        tr.resolve_dtype("fp16", "cpu", NO_BF16)
    with pytest.raises(EncoderError, match="got 'half'"):
        TransformerEncoder(device="cpu", dtype="half")


def test_cpu_flags_reads_the_flags_line(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert tr.cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16"}
    assert tr.cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize(("flags", "want"), [(NO_BF16 | {"avx512_bf16"}, "bf16"), (NO_BF16, "fp32")])
def test_auto_on_a_cpu_with_and_without_the_flag(monkeypatch, real_encoder, flags, want) -> None:
    """The flag reader is mocked; torch runs whatever it can on this machine."""
    monkeypatch.setattr(tr, "cpu_flags", lambda path="/proc/cpuinfo": flags)
    enc = load_encoder(None, device="cpu")  # the worker's path: dtype auto
    assert enc.dtype == want
    assert enc.model_fingerprint == real_encoder.model_fingerprint == real_encoder.fingerprint
    assert enc.fingerprint == (real_encoder.fingerprint + "-bf16" if want == "bf16"
                               else real_encoder.fingerprint)


def test_bf16_vectors_stay_within_tolerance_of_fp32(real_encoder, bf16_encoder) -> None:
    """Measured on the MovieLens catalogue (1,682 titles): 1 - cos(bf16, fp32) <= 2.4e-5,
    pairwise cosines differ by <= 3.3e-3. The bounds here leave ~4x headroom."""
    assert real_encoder.dtype == "fp32" and bf16_encoder.dtype == "bf16"
    a, b = bf16_encoder.encode(TITLES + REFERENCE), real_encoder.encode(TITLES + REFERENCE)
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    cos = (a * b).sum(1)
    assert 1 - cos.min() <= 1e-4, cos.min()
    assert np.abs(a - b).max() > 1e-5  # bf16 did run: fp32 runs agree to ~2e-7
    sim_a, sim_b = a @ a.T, b @ b.T
    assert np.abs(sim_a - sim_b).max() <= 1e-2
    ref = bf16_encoder.encode(REFERENCE)
    for (i, j), want in DOCUMENTED.items():
        assert float(ref[i] @ ref[j]) == pytest.approx(want, abs=3e-3)  # fp32: 5e-4


def test_fingerprints_name_the_dtype(real_encoder, bf16_encoder) -> None:
    assert real_encoder.fingerprint == real_encoder.model_fingerprint  # fp32: unchanged ids
    assert bf16_encoder.model_fingerprint == real_encoder.model_fingerprint
    assert bf16_encoder.fingerprint == real_encoder.fingerprint + "-bf16"


def test_a_bf16_worker_refuses_fp32_state_and_back(tmp_path, real_encoder, bf16_encoder) -> None:
    """A dtype switch never mixes fp32 and bf16 vectors: the state directory's model mark and
    every partition snapshot carry the vectors' fingerprint."""
    from stream.worker.pipeline import Pipeline
    from stream.worker.testing import DeadLetters

    s = Settings.from_env({}, state_dir=str(tmp_path / "state"))
    old = Pipeline(s, real_encoder, dead_letters=DeadLetters())
    old.store.mark_model(real_encoder.fingerprint)
    old.store.write(0, old.store.dumps(old.load_partition(0)))
    with pytest.raises(StateError, match=f"{real_encoder.fingerprint}.*-bf16"):
        Pipeline(s, bf16_encoder, dead_letters=DeadLetters()).store.check_model(
            bf16_encoder.fingerprint)
    with pytest.raises(StateError, match="model"):
        Pipeline(s, bf16_encoder, dead_letters=DeadLetters()).load_partition(0)
    s2 = Settings.from_env({}, state_dir=str(tmp_path / "state2"))
    new = Pipeline(s2, bf16_encoder, dead_letters=DeadLetters())
    new.store.write(0, new.store.dumps(new.load_partition(0)))
    with pytest.raises(StateError, match="model"):
        Pipeline(s2, real_encoder, dead_letters=DeadLetters()).load_partition(0)


def test_bench_encoder_default_dtypes_follow_the_cpu(monkeypatch) -> None:
    from stream.bench.encoder import bench_encoder

    for flags, want in ((NO_BF16, {"fp32"}), (NO_BF16 | {"avx512_bf16"}, {"fp32", "bf16"})):
        monkeypatch.setattr(tr, "cpu_flags", lambda path="/proc/cpuinfo", f=flags: f)
        rows = bench_encoder("cpu", batch_sizes=(2,), tokens=(128,), seconds=0.01,
                             report=lambda *_: None)
        assert {(r["mode"], r["dtype"]) for r in rows} == (
            {("model-eager", d) for d in want} | {("encode", d) for d in want})
        assert all(r["sentences_per_s"] > 0 for r in rows)


def test_bench_threads_flag_is_validated_in_one_line() -> None:
    import argparse

    from stream.bench.encoder import bench_encoder_cli

    args = argparse.Namespace(threads=-1, tokens="32", batch_sizes="1", dtypes=None)
    with pytest.raises(ConfigError, match=r"^--threads: need >= 0 \(0: torch's default\), got -1$"):
        bench_encoder_cli(args)
