"""Ranks with ties at their expected position, and the metrics computed from them.

For a target with score ``s``, among the candidate items (every catalogue item the protocol
does not exclude) ``g`` score higher and ``e`` others score the same.  Under a uniformly random
order of the tie group the target's position is uniform on ``g+1 .. g+e+1``; every metric is its
exact expectation over that order: Recall@K = the fraction of those positions within K,
NDCG@K = the mean of ``1/log2(1+p)`` over them (0 beyond K), MRR = the mean of ``1/p``.  The
expected rank is ``1 + g + e/2``.  So a sparse scorer gains nothing from the order of its
zero-score tail, and nothing depends on catalogue rows.

Scores are compared after rounding to 1e-10 of the row's largest finite ``|score|``, so two
scores that are equal in exact arithmetic but differ in the last bits (floating-point sums in
another order) still count as a tie.  ``-inf`` marks "not a candidate": all such items tie.
"""

from __future__ import annotations

import numpy as np

KS = (10, 20)
METRICS = ("recall@10", "recall@20", "ndcg@20", "mrr")
_RESOLUTION = 1e10


def quantise(scores: np.ndarray) -> np.ndarray:
    """Rows rounded to 1e-10 of each row's max finite |score| (``-inf`` kept)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    finite = np.isfinite(s)
    m = np.where(finite, np.abs(s), 0.0).max(axis=1, keepdims=True)
    m = np.where(m > 0, m, 1.0)
    out = np.where(finite, np.round(np.where(finite, s, 0.0) / m * _RESOLUTION), s)
    return out


def tie_counts(scores: np.ndarray, targets: np.ndarray,
               excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(g, e) for each target of ONE query: ``scores`` [n_items] (already quantised), the
    target rows, and a bool mask of excluded items (never counted; a target is never
    excluded by the callers)."""
    s = scores
    if excluded is not None and excluded.any():
        s = s[~excluded]
    st = scores[targets]
    srt = np.sort(s)
    # greater: items strictly above; equal: items equal minus the target itself
    hi = np.searchsorted(srt, st, "right")
    lo = np.searchsorted(srt, st, "left")
    g = len(srt) - hi
    e = hi - lo - 1
    return g.astype(np.int64), e.astype(np.int64)


def _prefix(n: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.arange(1, n + 1, dtype=np.float64)
    disc = np.r_[0.0, np.cumsum(1.0 / np.log2(p + 1.0))]
    harm = np.r_[0.0, np.cumsum(1.0 / p)]
    return disc, harm


def expected_metrics(g: np.ndarray, e: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, np.ndarray]:
    """Per-case expected Recall@K (each K), NDCG@20, MRR and the expected rank."""
    g = np.asarray(g, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    n = int((g + e + 1).max()) if len(g) else 1
    disc, harm = _prefix(max(n, max(ks), 20))
    size = (e + 1).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at(g, e, k)
    top = np.minimum(g + e + 1, 20)
    out["ndcg@20"] = np.where(g < 20, (disc[np.maximum(top, g)] - disc[np.minimum(g, 20)]) / size,
                              0.0)
    out["mrr"] = (harm[g + e + 1] - harm[g]) / size
    out["rank"] = 1.0 + g + e / 2.0
    return out


def recall_at(g: np.ndarray, e: np.ndarray, k: int) -> np.ndarray:
    """P(position <= k) with the position uniform on g+1 .. g+e+1."""
    return np.clip(k - g, 0, e + 1).astype(np.float64) / (e + 1).astype(np.float64)


def recall_curve(g: np.ndarray, e: np.ndarray, kmax: int = 50) -> np.ndarray:
    """Mean Recall@K for K = 1..kmax."""
    if len(g) == 0:
        return np.zeros(kmax)
    return np.array([recall_at(g, e, k).mean() for k in range(1, kmax + 1)])
