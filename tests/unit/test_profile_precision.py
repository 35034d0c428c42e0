"""Issue 12: a profile stored as (anchor, float64 norm, float32 unit vector) stays within 1e-5
of the float64 oracle after 10^6 decayed updates of one user, in mixed batch sizes."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.eventtypes import DEFAULT_WEIGHTS
from stream.core.profile import DEFAULT_HALF_LIFE_MS, ProfileParams, ProfileTable

pytestmark = pytest.mark.unit

DIM = 384
N_EVENTS = 1_000_000
T0 = 1_700_000_000_000


def _minilm_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit vectors that share a common direction, as sentence embeddings do (pairwise cosine
    about 0.2-0.4 rather than 0): the sum then grows nearly linearly, the hard case for a
    float32 direction (each update moves it by ~1/n of its length)."""
    common = rng.standard_normal(DIM)
    common /= np.linalg.norm(common)
    topics = rng.standard_normal((32, DIM))
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    v = 0.55 * common + 0.45 * topics[rng.integers(0, 32, n)] + 0.04 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _log(seed: int, gap_ms: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pool of item vectors, item per event, ts per event, weight per event): 10^6 events of
    one user, mean gap ``gap_ms``, 2% of them late by up to a day (out of order)."""
    rng = np.random.default_rng(seed)
    pool = _minilm_like(rng, 5_000)
    items = rng.integers(0, len(pool), N_EVENTS)
    ts = T0 + np.cumsum(rng.exponential(gap_ms, N_EVENTS)).astype(np.int64)
    late = rng.random(N_EVENTS) < 0.02
    ts[late] -= rng.integers(0, 86_400_000, int(late.sum()))
    types = list(DEFAULT_WEIGHTS)
    w = np.array([DEFAULT_WEIGHTS[t] for t in types])[rng.integers(0, len(types), N_EVENTS)]
    return pool, items, ts, w


def _oracle(pool: np.ndarray, items: np.ndarray, ts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The float64 unit vector of sum w * 2**((ts - max ts)/H) * v, summed per item first."""
    coef = w * np.exp2((ts - ts.max()).astype(np.float64) / DEFAULT_HALF_LIFE_MS)
    per_item = np.bincount(items, weights=coef, minlength=len(pool))
    s = per_item @ pool.astype(np.float64)
    return s / np.linalg.norm(s)


@pytest.mark.parametrize("gap_ms", [30_000.0, 600.0])  # ~29k / ~1.4M events per half-life
def test_a_million_decayed_updates_stay_within_1e_5_of_the_float64_oracle(gap_ms: float) -> None:
    pool, items, ts, w = _log(0, gap_ms)
    table = ProfileTable(DIM, ProfileParams())
    rng = np.random.default_rng(1)
    sizes = rng.choice([1, 3, 17, 64, 500], size=N_EVENTS, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    bounds = np.minimum(np.cumsum(np.concatenate([[0], sizes])), N_EVENTS)
    bounds = bounds[: int(np.searchsorted(bounds, N_EVENTS)) + 1]
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        table.apply(["u"] * (b - a), ts[a:b], w[a:b], pool[items[a:b]])
    want = _oracle(pool, items, ts, w)
    got = table.vector("u")
    assert got is not None and got.dtype == np.float32
    diff = float(np.abs(got.astype(np.float64) - want).max())
    cos = float(got.astype(np.float64) @ want) / float(np.linalg.norm(got.astype(np.float64)))
    assert diff <= 1e-5, diff
    assert cos >= 1 - 1e-5, cos
    parts = table.parts("u")
    assert parts is not None and parts[0] == int(ts.max())
