"""Intra-list diversity of a served top-L list, with ties unordered as the evaluator ranks.

ILD of a list = the mean over its ``L(L-1)/2`` pairs of ``1 - cos(a, b)`` of the items'
embeddings.  The served list of a score row is its top ``L`` candidates (finite scores, the
excluded items removed; ``L = min(20, candidates)``).  When equal scores straddle the cut the
list is not unique: like the metrics (``stream.eval.metrics``) the diversity is the exact
expectation over a uniformly random order of the tie group.  With ``S`` the ``a`` items strictly
above the cut, ``T`` the ``m`` tied items of which ``r = L - a`` are served, a tied item is
served with probability ``r/m`` and a tied pair with ``r(r-1)/(m(m-1))``, and the number of pairs
is ``L(L-1)/2`` whatever the draw, so::

    E[ILD] = (D(S) + r/m * D(S, T) + r(r-1)/(m(m-1)) * D(T)) / (L(L-1)/2)

where ``D`` sums ``1 - cos`` over the pairs inside a set or between two sets.  The sums of
cosines come from vector sums (``sum_{i<j} v_i.v_j = (|sum v|^2 - sum |v|^2) / 2``), so a tie
group of the whole catalogue costs O(m d), not O(m^2 d).  Scores are compared as given: pass
rows already quantised (``stream.eval.metrics.quantise``) so near-equal sums tie as in the
metrics.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expected_ild", "list_ild", "unit_rows"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float64 rows scaled to unit length (zero rows stay zero)."""
    v = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    out: np.ndarray = np.where(n > 0, v / np.where(n > 0, n, 1.0), 0.0)
    return out


def list_ild(emb: np.ndarray) -> float:
    """Mean pairwise ``1 - cos`` of the rows of ``emb`` (unit rows), by brute force."""
    n = len(emb)
    if n < 2:
        return float("nan")
    g = emb @ emb.T
    iu = np.triu_indices(n, 1)
    return float((1.0 - g[iu]).mean())


def _pair_cos_within(v: np.ndarray) -> float:
    s = v.sum(axis=0)
    return float((s @ s - np.einsum("ij,ij->", v, v)) / 2.0)


def expected_ild(scores: np.ndarray, emb: np.ndarray, excluded: np.ndarray | None = None,
                 top: int = 20) -> float:
    """Expected ILD of the served top ``top`` of one score row (module docstring).

    ``scores`` [n_items] (``-inf``: not a candidate, never served), ``emb`` [n_items, d] unit
    rows (``unit_rows``), ``excluded`` a bool mask of items never served.  NaN when fewer than
    two items are served."""
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    if excluded is not None:
        ok &= ~excluded
    idx = np.flatnonzero(ok)
    n_list = min(top, len(idx))
    if n_list < 2:
        return float("nan")
    sv = s[idx]
    cut = np.sort(sv)[::-1][n_list - 1]  # the score of the L-th served item
    sure = idx[sv > cut]
    tied = idx[sv == cut]
    a, m = len(sure), len(tied)
    r = n_list - a
    vs, vt = emb[sure], emb[tied]
    cos_s = _pair_cos_within(vs) if a > 1 else 0.0
    cos_st = float(vs.sum(axis=0) @ vt.sum(axis=0)) if a and m else 0.0
    cos_t = _pair_cos_within(vt) if m > 1 else 0.0
    p1 = r / m
    p2 = r * (r - 1) / (m * (m - 1)) if m > 1 else 0.0
    pairs_s = a * (a - 1) / 2.0
    dist = (pairs_s - cos_s) + p1 * (a * m - cos_st) + p2 * (m * (m - 1) / 2.0 - cos_t)
    return float(dist / (n_list * (n_list - 1) / 2.0))
