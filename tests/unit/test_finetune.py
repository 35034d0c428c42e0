"""Fine-tuning, the self-describing model directory, loading checks, fingerprint refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from encoder import EncoderError, load_encoder
from encoder.metadata import META_FILE, read_metadata, save_model_dir
from encoder.training.finetune import (
    FinetuneConfig,
    ItemFrequency,
    _Contexts,
    batch_loss,
    finetune,
    inbatch_loss,
    training_examples,
)
from encoder.training.logdata import load_log
from stream.core.profile import ProfileParams
from tests.unit.test_eval import write_log

pytestmark = pytest.mark.unit

_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer, 32-wide BertModel with the real tokenizer and mean pooling."""
    import torch
    from transformers import BertConfig, BertModel

    from encoder.transformer import default_model_path

    real = default_model_path()
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(folder))
    for name in _TOKENIZER_FILES:
        shutil.copy2(f"{real}/{name}", folder / name)
    shutil.copytree(f"{real}/1_Pooling", folder / "1_Pooling")
    return folder


def _state(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _fixed_loss(folder, log, sp, n: int = 24) -> float:
    import torch

    enc = load_encoder(str(folder), device="cpu")
    params = ProfileParams()
    ex = training_examples(log, sp)[:n]
    cache = enc.encode(log.texts)
    q = _Contexts(log, params, 200)(ex, cache)
    hist = [set(u.rows[u.is_item].tolist()) for u in log.users]
    tw = [params.weight_array(u.types) for u in log.users]
    with torch.no_grad():
        return float(batch_loss(enc.model, enc.tokenizer, log, ex, q, hist, tw, 0.05, 64))


def test_finetune_lowers_loss_and_writes_model_dir(tmp_path, tiny_model) -> None:
    ep, ip = write_log(tmp_path, n_users=8, n_items=16, per_user=14)
    out = tmp_path / "model"
    cfg = FinetuneConfig(batch_size=24, lr=3e-3, max_steps=8, epochs=3, eval_every=4, patience=99,
                         device="cpu", seed=1, keep_best=False)
    meta = finetune(ep, ip, out, cfg, base=str(tiny_model), progress=False)
    log = load_log(ep, ip)
    sp = log.split()
    assert _fixed_loss(out, log, sp) < _fixed_loss(tiny_model, log, sp)
    assert meta["training"]["loss_last"] < meta["training"]["loss_first"]
    before, after = _state(tiny_model), _state(out)
    assert set(before) == set(after)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    # Self-describing: metadata round-trips and records what it must.
    assert read_metadata(out) == json.loads(json.dumps(meta))
    assert meta["training_data"]["fingerprint"] == log.fingerprint
    assert meta["training_data"]["events"]["test"] == len(log.ids_of(sp, "test"))
    assert meta["hyperparameters"]["lr"] == 3e-3 and meta["hyperparameters"]["seed"] == 1
    assert meta["base_model"]["fingerprint"] != meta["fingerprint"]
    assert len(meta["base_model"]["sha256"]) == 64 and meta["created"]
    assert meta["validation"]["history"][0]["step"] == 0
    assert meta["hyperparameters"]["logq"] is True and meta["logq"]["enabled"] is True
    assert meta["logq"]["buckets"] == log.n_items and "logQ" in meta["hyperparameters"]["objective"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"):
        assert (out / name).is_file()
    enc = load_encoder(str(out), device="cpu")
    assert enc.model_fingerprint == meta["fingerprint"] == enc.metadata["fingerprint"]
    # Seeded: the same run gives the same weights.
    out2 = tmp_path / "model2"
    finetune(ep, ip, out2, cfg, base=str(tiny_model), progress=False)
    assert read_metadata(out2)["weights_sha256"] == meta["weights_sha256"]


def test_save_load_identical_embeddings(tmp_path, tiny_model) -> None:
    import torch

    enc = load_encoder(str(tiny_model), device="cpu")
    with torch.no_grad():
        for p in enc.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    texts = ["Toy Story (1995) | Animation", "", "a longer title " * 10, "GoldenEye (1995)"]
    want = enc.encode(texts)
    meta = save_model_dir(enc.model, enc.tokenizer, tiny_model, tmp_path / "m", {
        "base_model": {"name": "tiny"}, "hyperparameters": {"lr": 1.0}}, enc.max_length)
    got = load_encoder(str(tmp_path / "m"), device="cpu")
    np.testing.assert_array_equal(got.encode(texts), want)
    assert got.model_fingerprint == meta["fingerprint"] != enc.model_fingerprint
    assert read_metadata(tmp_path / "m")["hyperparameters"] == {"lr": 1.0}
    # Saving again over our own model directory replaces it atomically.
    save_model_dir(enc.model, enc.tokenizer, tiny_model, tmp_path / "m", {
        "base_model": {"name": "tiny"}}, enc.max_length)
    assert load_encoder(str(tmp_path / "m"), device="cpu").model_fingerprint == meta["fingerprint"]
    with pytest.raises(EncoderError, match="not a model directory"):
        save_model_dir(enc.model, enc.tokenizer, tiny_model, tiny_model, {}, enc.max_length)


@pytest.fixture
def saved(tmp_path, tiny_model):
    """The tiny model, slightly changed (unchanged weights would keep the fingerprint), saved."""
    import torch

    enc = load_encoder(str(tiny_model), device="cpu")
    with torch.no_grad():
        next(enc.model.parameters()).add_(0.01)
    out = tmp_path / "m"
    save_model_dir(enc.model, enc.tokenizer, tiny_model, out, {"base_model": {"name": "tiny"}},
                   enc.max_length)
    return out


@pytest.mark.parametrize("damage, message", [
    ("flip_weights", "does not match the recorded"),
    ("bad_json", "unreadable profiles_model.json"),
    ("format", "unsupported format"),
    ("fingerprint", "metadata says"),
    ("no_weights", "weights file model.safetensors is missing"),
])
def test_corrupt_or_incompatible_dir_is_one_line_error(saved, damage, message) -> None:
    meta_path = saved / META_FILE
    meta = json.loads(meta_path.read_text())
    if damage == "flip_weights":
        data = bytearray((saved / "model.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (saved / "model.safetensors").write_bytes(bytes(data))
    elif damage == "bad_json":
        meta_path.write_text("{not json")
    elif damage == "format":
        meta_path.write_text(json.dumps({**meta, "format": "profiles-encoder/99"}))
    elif damage == "fingerprint":
        meta_path.write_text(json.dumps({**meta, "fingerprint": "0" * 16}))
    else:
        (saved / "model.safetensors").unlink()
    with pytest.raises(EncoderError, match=message) as err:
        load_encoder(str(saved), device="cpu")
    assert "\n" not in str(err.value)


def test_missing_dir_is_one_line_error(tmp_path) -> None:
    with pytest.raises(EncoderError, match="not a directory"):
        load_encoder(str(tmp_path / "nope"), device="cpu")


def test_worker_refuses_snapshot_of_another_model(tmp_path, tiny_model, saved) -> None:
    """State made with the base model is refused by a worker on the fine-tuned one."""
    from stream.core.errors import StateError
    from stream.settings import Settings
    from stream.worker.pipeline import Pipeline
    from stream.worker.testing import DeadLetters

    base, tuned = load_encoder(str(tiny_model), device="cpu"), load_encoder(str(saved), device="cpu")
    assert base.fingerprint != tuned.fingerprint
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"))
    old = Pipeline(s, base, dead_letters=DeadLetters())
    old.store.write(0, old.store.dumps(old.load_partition(0)))
    assert Pipeline(s, base, dead_letters=DeadLetters()).load_partition(0).model == base.fingerprint
    with pytest.raises(StateError, match="model"):
        Pipeline(s, tuned, dead_letters=DeadLetters()).load_partition(0)


def test_real_model_two_steps_change_weights(tmp_path) -> None:
    ep, ip = write_log(tmp_path, n_users=4, n_items=10, per_user=8)
    cfg = FinetuneConfig(batch_size=8, lr=1e-4, max_steps=2, eval_every=2, patience=9,
                         device="cpu", keep_best=False)
    meta = finetune(ep, ip, tmp_path / "m", cfg, progress=False)
    assert meta["base_model"]["sha256"] == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")
    assert meta["weights_sha256"] != meta["base_model"]["sha256"]
    assert load_encoder(str(tmp_path / "m"), device="cpu").model_fingerprint == meta["fingerprint"]


def test_cli_eval_json_and_corrupt_model(tmp_path, saved, capsys) -> None:
    from stream.cli import main

    ep, ip = write_log(tmp_path, n_users=5, n_items=10, per_user=8)
    assert main(["encoder", "eval", "--events", str(ep), "--items", str(ip), "--model", str(saved),
                 "--device", "cpu", "--bootstrap", "50", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["methods"]) == {"popularity", "untuned", "fine-tuned"}
    assert "fine-tuned - untuned" in res["differences"] and res["warning"].startswith("warning")
    (saved / META_FILE).write_text("[]")
    with pytest.raises(SystemExit) as ex:
        main(["encoder", "eval", "--events", str(ep), "--items", str(ip), "--model", str(saved)])
    assert ex.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("profiles: error: model directory") and "\n" not in err


def test_item_frequency_converges_to_the_sampling_probability() -> None:
    """Tolerance (documented): on 4,000 batches of 16 draws from Zipf(1) over 40 items, every
    item's estimate is within 30 % of its true P(in a batch) = 1 - (1 - q)^16 (0.09 ... 0.98)
    and the mean relative error is below 8 %.  With alpha = 0.01 the estimate averages ~200
    gaps, so the statistical error is about 5 % (measured over seeds 0-4: max 0.18, mean
    0.04-0.06)."""
    rng = np.random.default_rng(0)
    n, size, steps = 40, 16, 4000
    q = 1.0 / np.arange(1, n + 1)
    q /= q.sum()
    want = 1.0 - (1.0 - q) ** size
    f = ItemFrequency(n, alpha=0.01)
    for t in range(1, steps + 1):
        f.update(rng.choice(n, size, p=q), t)  # duplicates in a batch count once
    rel = np.abs(f.prob(np.arange(n)) - want) / want
    assert rel.max() < 0.30 and rel.mean() < 0.08, (rel.max(), rel.mean())


def test_item_frequency_by_hand_and_hashing() -> None:
    f = ItemFrequency(4, alpha=0.5)
    for t in (2, 4, 6):
        f.update(np.array([1, 1]), t)
    # B: 0.5*2 = 1, 0.5*1 + 0.5*2 = 1.5, 0.5*1.5 + 0.5*2 = 1.75; bias-corrected 1.75 / 0.875 = 2.
    assert f.prob(np.array([1]))[0] == pytest.approx(0.5)
    assert f.prob(np.array([0]))[0] == pytest.approx(1 / 6)  # never seen: at most once in 6 steps
    # Fewer buckets than ids: 1 and 5 share bucket 1, so 5 reads 1's estimate (an over-estimate).
    assert f.prob(np.array([5]))[0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ItemFrequency(0)


def test_logq_corrected_loss_equals_hand_computed_value() -> None:
    import math

    import torch

    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]])
    target, weight = torch.tensor([0, 2]), torch.tensor([1.0, 3.0])
    mask = torch.tensor([[False, False, True], [False, False, False]])  # row 0: column 2 is history
    log_p = torch.log(torch.tensor([0.5, 0.25, 1.0]))
    e = math.e
    # Corrected logits: row 0 (1 + ln 2, 2 + ln 4, masked), row 1 (ln 2, 1 + ln 4, 3).
    ce0 = math.log(2 * e + 4 * e**2) - math.log(2 * e)  # = ln(1 + 2e)
    ce1 = math.log(2 + 4 * e + e**3) - 3
    want = (1 * ce0 + 3 * ce1) / 4
    assert float(inbatch_loss(logits, target, weight, mask, log_p)) == pytest.approx(want, rel=1e-6)
    plain = (math.log(1 + e) + 3 * (math.log(1 + e + e**3) - 3)) / 4
    assert float(inbatch_loss(logits, target, weight, mask)) == pytest.approx(plain, rel=1e-6)


def test_logq_flag_is_recorded(tmp_path, tiny_model) -> None:
    """``--no-logq`` through the CLI: recorded in the metadata, and another model than logQ's."""
    from stream.cli import main

    ep, ip = write_log(tmp_path, n_users=6, n_items=12, per_user=10)
    common = ["encoder", "finetune", "--events", str(ep), "--items", str(ip), "--base",
              str(tiny_model), "--max-steps", "2", "--eval-every", "2", "--batch-size", "16",
              "--lr", "1e-3", "--device", "cpu", "--seed", "3", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "off"), "--no-logq"]) == 0
    assert main([*common, "--out", str(tmp_path / "on"), "--logq"]) == 0
    off, on = read_metadata(tmp_path / "off"), read_metadata(tmp_path / "on")
    assert off["hyperparameters"]["logq"] is False and off["logq"]["enabled"] is False
    assert on["hyperparameters"]["logq"] is True and on["logq"]["enabled"] is True
    assert off["weights_sha256"] != on["weights_sha256"]
