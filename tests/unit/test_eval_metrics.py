"""profiles eval: ties in score count at their expected rank (exact, against brute force)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.eval.metrics import expected_metrics, quantise, recall_at, recall_curve, tie_counts

pytestmark = pytest.mark.unit


def brute(scores: np.ndarray, target: int, excluded: set[int], k: int) -> dict[str, float]:
    """Average the metrics over every order of the items (the tie order is the only thing a
    permutation changes): rank = 1 + position among the kept items sorted by score desc."""
    keep = [i for i in range(len(scores)) if i not in excluded]
    rec, ndcg, mrr = [], [], []
    for perm in itertools.permutations(keep):
        order = sorted(perm, key=lambda i: -scores[i])  # stable: ties in permutation order
        r = order.index(target) + 1
        rec.append(float(r <= k))
        ndcg.append(1 / np.log2(1 + r) if r <= 20 else 0.0)
        mrr.append(1 / r)
    return {"recall": float(np.mean(rec)), "ndcg@20": float(np.mean(ndcg)),
            "mrr": float(np.mean(mrr))}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=7), st.data())
def test_expected_metrics_equal_the_average_over_tie_orders(vals: list[int], data) -> None:
    scores = np.array(vals, dtype=np.float64)
    n = len(scores)
    target = data.draw(st.integers(0, n - 1))
    excluded = set(data.draw(st.lists(st.integers(0, n - 1), max_size=2))) - {target}
    k = data.draw(st.integers(1, 4))
    mask = np.zeros(n, dtype=bool)
    mask[list(excluded)] = True
    g, e = tie_counts(quantise(scores)[0], np.array([target]), mask)
    m = expected_metrics(g, e, (k,))
    b = brute(scores, target, excluded, k)
    assert m[f"recall@{k}"][0] == pytest.approx(b["recall"], abs=1e-12)
    assert m["ndcg@20"][0] == pytest.approx(b["ndcg@20"], abs=1e-12)
    assert m["mrr"][0] == pytest.approx(b["mrr"], abs=1e-12)
    assert m["rank"][0] == 1 + g[0] + e[0] / 2


def test_known_answers_and_a_sparse_tail() -> None:
    # 1000 items, the scorer knows 3; the target is in the zero tail of 997 (996 others):
    # expected rank 3 + 1 + 996/2 = 502, Recall@20 = 17/997
    s = np.zeros(1000)
    s[[5, 6, 7]] = [3.0, 2.0, 1.0]
    g, e = tie_counts(quantise(s)[0], np.array([999, 6]))
    assert g.tolist() == [3, 1] and e.tolist() == [996, 0]
    m = expected_metrics(g, e)
    assert m["rank"].tolist() == [502.0, 2.0]
    assert m["recall@20"][0] == pytest.approx(17 / 997)
    assert m["recall@10"][1] == 1.0 and m["ndcg@20"][1] == pytest.approx(1 / np.log2(3))
    # not a candidate (-inf) ties with every other non-candidate
    s2 = np.full(10, -np.inf)
    s2[:2] = [0.5, 0.4]
    g, e = tie_counts(quantise(s2)[0], np.array([9]))
    assert (g[0], e[0]) == (2, 7)
    assert recall_at(np.array([2]), np.array([7]), 4)[0] == pytest.approx(2 / 8)
    curve = recall_curve(np.array([0, 2]), np.array([0, 7]), kmax=12)
    assert curve[0] == pytest.approx(0.5) and curve[-1] == pytest.approx(1.0)


def test_quantise_merges_last_bit_differences_only() -> None:
    a = 0.1 + 0.2 + 0.3
    b = 0.3 + 0.2 + 0.1  # 0.6000000000000001 vs 0.6
    assert a != b
    q = quantise(np.array([a, b, 0.6 + 1e-6, -np.inf]))[0]
    assert q[0] == q[1] and q[2] > q[1] and q[3] == -np.inf
    # scale-free: the same relative resolution for tiny and huge scores
    for scale in (1e-30, 1.0, 1e30):
        q = quantise(np.array([a, b, 1.0]) * scale)[0]
        assert q[0] == q[1]
    assert quantise(np.zeros(3))[0].tolist() == [0.0, 0.0, 0.0]
