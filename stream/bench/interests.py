"""``python -m stream.bench.interests``: the cost of multi-interest profiles, side by side in
one run, on a log in our schema (MovieLens by default: ``--items``, ``--events``).

* ``core``: µs per event of ``InterestTable.apply`` against ``ProfileTable.apply`` on the same
  batches (log order, ``--batch`` events each, the event vectors and weights the worker uses);
* ``pipeline``: µs per event of the in-process worker's whole batch step
  (``stream.worker.testing``: decode, dedupe, profiles, signals, bandit...) with
  ``PROFILES_INTERESTS_K=0`` against ``--k`` (the catalogue encoded once, outside the timing);
* ``--synthetic``: ``core`` only, on generated batches (10k users, events around 32 random
  centres, every batch spread over many users: the vectorised path), no data needed;
* ``order``: users' interests after applying the log in shuffled orders against log order:
  importance-weighted cosine of the best one-to-one matching of interests (percentiles), and
  the cosine of the importance-weighted sum of the interests to the single profile (min).

Prints one JSON document.  A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.core.events import Item
from stream.core.interests import InterestParams, Interests, InterestTable
from stream.core.profile import ProfileParams, ProfileTable


def _load(path: Path, limit: int = 0) -> list[dict[str, Any]]:
    out = []
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                out.append(orjson.loads(line))
                if limit and len(out) >= limit:
                    break
    return out


def _encoder(kind: str, dim: int) -> Any:
    if kind == "hashing":
        from encoder.fake import HashingEncoder

        return HashingEncoder(dim)
    from encoder.transformer import TransformerEncoder

    return TransformerEncoder(device="cpu")


def _apply(table: Any, batches: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]
           ) -> float:
    start = time.perf_counter()
    for b in batches:
        table.apply(*b)
    return time.perf_counter() - start


def _matched(a: Interests, b: Interests) -> float:
    if len(a) != len(b) or not len(a):
        return -1.0
    sims = a.vectors @ b.vectors.T
    return max(float(sum(a.shares[i] * sims[i, j] for i, j in enumerate(p)))
               for p in itertools.permutations(range(len(b))))


def synthetic(n_users: int = 10_000, dim: int = 384, batch: int = 500, n_batches: int = 200,
              seed: int = 0) -> dict[str, float]:
    """µs per event of ProfileTable.apply and InterestTable.apply, same batches, interleaved."""
    rng = np.random.default_rng(seed)
    names = [f"u{i}" for i in range(n_users)]
    centres = rng.standard_normal((32, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    batches = []
    t0 = 1_700_000_000_000
    for b in range(n_batches):
        idx = rng.integers(0, n_users, batch)
        ts = t0 + b * 1000 + rng.integers(-3_600_000, 1000, batch)
        v = centres[rng.integers(0, 32, batch)] + 0.5 * rng.standard_normal((batch, dim)) / (
            dim ** 0.5)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        batches.append(([names[i] for i in idx], ts.astype(np.int64),
                        rng.choice([1.0, 2.0, 4.0, 8.0, 1.5], batch), v.astype(np.float32)))
    prof = ProfileTable(dim, ProfileParams())
    ints = InterestTable(dim, InterestParams())
    for args in batches[:20]:  # warm up: most rows allocated
        prof.apply(*args)
        ints.apply(*args)
    t_p = t_i = 0.0
    for args in batches:
        s = time.perf_counter()
        prof.apply(*args)
        t_p += time.perf_counter() - s
        s = time.perf_counter()
        ints.apply(*args)
        t_i += time.perf_counter() - s
    per = 1e6 / (n_batches * batch)
    return {"profile": round(t_p * per, 2), "interests": round(t_i * per, 2),
            "ratio": round(t_i / t_p, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", default="/work/ml/items.jsonl")
    ap.add_argument("--events", default="/work/ml/events.jsonl")
    ap.add_argument("--encoder", choices=("transformer", "hashing"), default="transformer")
    ap.add_argument("--dim", type=int, default=384, help="hashing encoder dimension")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="core timing: best of")
    ap.add_argument("--shuffles", type=int, default=3)
    ap.add_argument("--pipeline-events", type=int, default=20_000)
    ap.add_argument("--synthetic", action="store_true", help="generated batches, core only")
    a = ap.parse_args(argv)
    if a.synthetic:
        return {"synthetic_core_us_per_event": synthetic()}

    items = _load(Path(a.items))
    events = _load(Path(a.events))
    enc = _encoder(a.encoder, a.dim)
    objs = [Item(str(it["item_id"]), str(it.get("title") or ""), it.get("category"),
                 it.get("brand"), it.get("price")) for it in items]
    t0 = time.perf_counter()
    vecs = dict(zip([o.item_id for o in objs], enc.encode([o.text() for o in objs]),
                    strict=True))
    encode_s = time.perf_counter() - t0
    pp = ProfileParams()
    ip = InterestParams(k=a.k, threshold=a.threshold, half_life_ms=pp.half_life_ms)
    evs = [e for e in events if e.get("item_id") in vecs]
    dim = enc.dim

    def batches(log: list[dict[str, Any]]) -> list[tuple[list[str], np.ndarray, np.ndarray,
                                                        np.ndarray]]:
        out = []
        for i in range(0, len(log), a.batch):
            part = log[i:i + a.batch]
            out.append(([e["user_id"] for e in part],
                        np.array([e["ts"] for e in part], dtype=np.int64),
                        pp.weight_array([e["type"] for e in part]),
                        np.stack([vecs[e["item_id"]] for e in part])))
        return out

    base = batches(evs)
    prof_s, int_s = [], []
    for _ in range(a.repeats):  # interleaved, best of: the same load for both
        prof_s.append(_apply(ProfileTable(dim, pp), base))
        int_s.append(_apply(InterestTable(dim, ip), base))
    prof = ProfileTable(dim, pp)
    _apply(prof, base)
    table = InterestTable(dim, ip)
    _apply(table, base)
    counts = np.bincount(table.counts(), minlength=a.k + 1)

    def got(t: InterestTable, u: str) -> Interests:
        it = t.get(u)
        assert it is not None
        return it

    to_profile = min(float(got(table, u).profile() @ prof.vector(u)) for u in table.users())
    rng = np.random.default_rng(0)
    matched: list[float] = []
    for _ in range(a.shuffles):
        other = InterestTable(dim, ip)
        _apply(other, batches([evs[i] for i in rng.permutation(len(evs))]))
        matched += [_matched(got(table, u), got(other, u)) for u in table.users()]
    m = np.array(matched)
    out: dict[str, Any] = {
        "events": len(evs), "users": len(table), "dim": dim, "encoder": a.encoder,
        "encode_items_s": round(encode_s, 2), "k": a.k, "threshold": a.threshold,
        "batch": a.batch,
        "core_us_per_event": {"profile": round(min(prof_s) / len(evs) * 1e6, 2),
                              "interests": round(min(int_s) / len(evs) * 1e6, 2)},
        "interest_count_histogram": counts.tolist(),
        "bytes_per_user": table.bytes_per_user,
        "interest_sum_vs_profile_min_cosine": round(to_profile, 7),
        "order_matched_cosine": {
            "shuffles": a.shuffles, "min": round(float(m.min()), 4),
            "p10": round(float(np.percentile(m, 10)), 4),
            "median": round(float(np.median(m)), 4),
            "same_count": round(float((m > -1).mean()), 4)},
    }
    out["core_us_per_event"]["ratio"] = round(
        out["core_us_per_event"]["interests"] / out["core_us_per_event"]["profile"], 2)
    if a.pipeline_events:
        out["pipeline_us_per_event"] = asyncio.run(_pipeline(items, events[:a.pipeline_events],
                                                             enc, a))
    return out


async def _pipeline(items: list[dict[str, Any]], events: list[dict[str, Any]], enc: Any,
                    a: argparse.Namespace) -> dict[str, float]:
    from stream.settings import Settings
    from stream.worker.testing import InProcessWorker

    out: dict[str, float] = {}
    for k in (0, a.k, 0, a.k):  # twice each, interleaved: best of two
        with tempfile.TemporaryDirectory() as tmp:
            s = Settings.from_env({}, state_dir=tmp, interests_k=k,
                                  interests_threshold=a.threshold, max_future_ms=10 ** 15,
                                  min_ts=0, batch_size=a.batch)
            async with InProcessWorker(s, enc) as w:
                await w.items(items)
                spent = 0.0
                for i in range(0, len(events), a.batch):
                    recs = w.source.records(events[i:i + a.batch])
                    t0 = time.perf_counter()
                    await w.pipeline.process(recs)
                    spent += time.perf_counter() - t0
                key = f"k={k}"
                us = spent / len(events) * 1e6
                out[key] = round(min(out.get(key, us), us), 2)
    out["ratio"] = round(out[f"k={a.k}"] / out["k=0"], 3)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
