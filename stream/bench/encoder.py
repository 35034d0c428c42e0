"""``profiles bench encoder``: sentences/s and achieved FLOP/s of the encoder.

Two modes per (tokens, batch size, dtype):

* ``model``: pre-tokenised ``[batch, tokens]`` tensors already on the device, every token real
  (no padding): forward + mean pooling + normalisation under ``torch.inference_mode``.
* ``encode``: ``TransformerEncoder.encode`` on texts of exactly ``tokens`` tokens: tokenisation,
  length-sorted batching, host->device copy, forward, pooling and the copy back, once per
  dtype asked (``TransformerEncoder(dtype=...)``: fp32, or bf16 autocast).

Default dtypes: fp32 and bf16 on CUDA and on CPUs with native bf16 (AVX512_BF16 or AMX, what
``PROFILES_ENCODER_DTYPE=auto`` picks bf16 for), else fp32 alone.

FLOPs are counted on real (non-padding) tokens only, 2 per multiply-add, for a BERT encoder:
per layer ``2 L (4 h^2 + 2 h i) + 4 L^2 h`` (projections, feed-forward, attention scores and
weighted sum) plus the pooler's ``2 h^2``.  The fraction is of the device's dense peak for the
dtype: a table of known GPUs (``torch.cuda.get_device_name``), or for CPUs an estimate
``threads x GHz x FLOPs/cycle`` (AVX-512: 64, AVX2: 32 fp32 FLOPs/cycle, doubled for bf16 with
AVX512_BF16; the base clock from /proc/cpuinfo); ``--peak-tflops`` overrides both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.core.errors import ConfigError

# Dense (no sparsity) peak TFLOP/s by dtype; first matching name wins (order matters).
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "fp32": 31.2}),
]


def bert_flops(tokens: int, hidden: int, inter: int, layers: int) -> float:
    """FLOPs to encode one sequence of ``tokens`` real tokens."""
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inter) + 4 * tokens * tokens * hidden
    return float(layers * per_layer + 2 * hidden * hidden)


def cpu_peak_tflops(threads: int, dtype: str = "fp32") -> tuple[float, str]:
    flags, mhz, model = "", 0.0, "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = val
            elif key == "cpu MHz" and not mhz:
                mhz = float(val)
            elif key == "model name" and model == "cpu":
                model = val.strip()
    except OSError:
        pass
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16
    if dtype == "bf16" and "avx512_bf16" in flags:
        per_cycle *= 2  # vdpbf16ps: two bf16 multiply-adds per fp32 lane
    ghz = (mhz or 2000.0) / 1000
    return (threads * ghz * per_cycle / 1000,
            f"{model}, {threads} threads x {ghz:.2f} GHz x {per_cycle} {dtype} FLOP/cycle (estimate)")


def device_peak(device: Any, dtype: str, override: float | None) -> tuple[float, str]:
    import torch

    if override is not None:
        return override, "given by --peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS:
            if key in name:
                return peaks[dtype], f"{name} dense {dtype}"
        return float("nan"), f"{name}: unknown peak, pass --peak-tflops"
    return cpu_peak_tflops(torch.get_num_threads(), dtype)


def _texts(tokenizer: Any, n: int, tokens: int) -> list[str]:
    """``n`` texts that tokenise to exactly ``tokens`` ids (CLS + SEP included)."""
    import random

    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and 3 <= len(w) <= 8)
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(tokens - 2)) for _ in range(n)]


def _with_dtype(enc: Any, dtype: str) -> Any:
    """A shallow copy of ``enc`` (same model, tokenizer, budgets) that runs ``dtype``."""
    import copy

    from encoder.transformer import vectors_fingerprint

    out = copy.copy(enc)
    out.dtype = dtype
    out.fingerprint = vectors_fingerprint(enc.model_fingerprint, dtype)
    return out


def _time(fn, seconds: float, sync) -> tuple[int, float]:
    fn()
    sync()  # warm-up (and compile) outside the clock
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync()
        el = time.perf_counter() - t0
        if el >= seconds:
            return n, el


def bench_encoder(device: str = "auto", batch_sizes=(1, 4, 16, 64, 256, 1024), tokens=(32, 128),
                  dtypes=None, seconds: float = 1.0, peak_tflops: float | None = None,
                  compile: bool = False, path: str | None = None, report=print,
                  threads: int = 0) -> list[dict]:
    import torch

    if threads > 0:  # the worker runs PROFILES_ENCODER_THREADS (default 1)
        torch.set_num_threads(threads)

    from encoder.transformer import TransformerEncoder, resolve_dtype

    enc = TransformerEncoder(path, device=device, max_batch=max(batch_sizes),
                             max_tokens=max(batch_sizes) * max(tokens))
    dev = enc.device
    cfg = enc.model.config
    if dtypes is None:
        dtypes = ("fp32", "bf16") if resolve_dtype("auto", dev.type) == "bf16" else ("fp32",)
    # One encoder per dtype sharing the weights: ``encode`` rows run the encoder's own path.
    encoders = {dt: _with_dtype(enc, dt) for dt in dtypes}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    models = {"eager": enc.model}
    if compile:
        models["compiled"] = torch.compile(enc.model)
    rows: list[dict] = []
    report(f"{'mode':<16}{'dtype':>6}{'tokens':>7}{'batch':>7}{'sent/s':>12}{'TFLOP/s':>10}{'% peak':>8}")
    for L in tokens:
        flops = bert_flops(L, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers)
        texts = _texts(enc.tokenizer, max(batch_sizes), L)
        ids_all = enc.tokenizer(texts, return_tensors="pt", return_token_type_ids=False,
                                return_attention_mask=False)["input_ids"]
        assert ids_all.shape[1] == L, ids_all.shape
        for B in batch_sizes:
            ids = ids_all[:B].to(dev)
            mask = torch.ones_like(ids)
            cases: list[tuple[str, str, Any]] = [
                (f"model-{k}", dt, m) for k, m in models.items() for dt in dtypes]
            cases += [("encode", dt, None) for dt in dtypes]
            for mode, dt, model in cases:
                fn: Callable[[], None]
                if model is None:
                    def encode_fn(B: int = B, texts: list[str] = texts, e: Any = encoders[dt]) -> None:
                        e.encode(texts[:B])
                    fn = encode_fn
                else:
                    def model_fn(model: Any = model, dt: str = dt, ids: Any = ids,
                                 mask: Any = mask) -> None:
                        with torch.inference_mode(), torch.autocast(
                                device_type=dev.type, dtype=torch.bfloat16, enabled=dt == "bf16"):
                            h = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                            torch.nn.functional.normalize(h.mean(1), dim=1)
                    fn = model_fn
                n, el = _time(fn, seconds, sync)
                peak, peak_note = device_peak(dev, dt, peak_tflops)
                sps = n * B / el
                achieved = sps * flops / 1e12
                row = {"mode": mode, "dtype": dt, "tokens": L, "batch": B, "sentences_per_s": sps,
                       "tflops": achieved, "peak_tflops": peak, "fraction_of_peak": achieved / peak,
                       "peak_source": peak_note, "device": str(dev), "iterations": n}
                rows.append(row)
                report(f"{mode:<16}{dt:>6}{L:>7}{B:>7}{sps:>12.1f}{achieved:>10.3f}"
                       f"{100 * achieved / peak:>7.2f}%")
    if rows:
        report(f"peak: {'; '.join(sorted({r['peak_source'] for r in rows}))}; FLOPs/sentence: "
               + ", ".join(f"{L} tokens {bert_flops(L, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) / 1e9:.3f} GFLOP"
                           for L in tokens))
    return rows


def bench_encoder_cli(args: Any) -> int:
    def ints(text: str, flag: str) -> tuple[int, ...]:
        try:
            vals = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None
        if not vals or min(vals) < 1:
            raise ConfigError(f"{flag}: need positive integers, got {text!r}")
        return vals

    if getattr(args, "threads", 0) < 0:
        raise ConfigError(f"--threads: need >= 0 (0: torch's default), got {args.threads}")
    tokens = ints(args.tokens, "--tokens")
    if min(tokens) < 3:
        raise ConfigError("--tokens: each length must be >= 3 (CLS + SEP + a word)")
    dtypes = None
    if args.dtypes:
        dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
        if set(dtypes) - {"fp32", "bf16"}:
            raise ConfigError(f"--dtypes: fp32 and/or bf16, got {args.dtypes!r}")
    rows = bench_encoder(args.device, ints(args.batch_sizes, "--batch-sizes"), tokens, dtypes,
                         args.seconds, args.peak_tflops, args.compile,
                         threads=getattr(args, "threads", 0))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0
