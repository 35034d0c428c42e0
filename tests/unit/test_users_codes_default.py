"""Issue 12, bytes per user: the users index's default codes are ``SQ4`` (4 bits a component:
192 B + the 8-byte id per user in the IVF instead of SQ8's 384 + 8), re-ranked exactly from the
profile tables, so recall after churn stays >= 0.95 and every score is the exact inner product
with the user's current vector (what the oracle compares)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from index import IvfIndex, factory_of
from stream.core.bandit import BanditParams
from stream.core.profile import ProfileParams
from stream.settings import Settings
from stream.worker.indexes import users_index_spec
from stream.worker.profiles import ProfileStore
from stream.worker.state import PartitionState
from tests.unit.test_index_ann import DIM, _check_no_stale, _oracle, _queries, _vecs
from tests.unit.test_index_onecopy import _churn

pytestmark = pytest.mark.unit


def _default_spec(exact_below: int):  # the worker's spec, small threshold, no thread
    return dataclasses.replace(users_index_spec(Settings()), exact_below=exact_below,
                               background=False)


def test_default_users_codes_are_half_a_byte_a_component_and_keep_recall_after_churn() -> None:
    store: dict[str, np.ndarray] = {}

    def source(ids):
        return np.stack([store[i] for i in ids])

    idx = _default_spec(500).make(DIM, "users", source=source)
    assert isinstance(idx, IvfIndex)
    n = 2000
    ids = [f"u{k}" for k in range(n)]
    v = _vecs(11, n)
    store.update(zip(ids, v))
    idx.upsert(ids, v)
    assert factory_of(idx).endswith(",SQ4") and idx._mat is None
    assert idx.nbytes() / n <= DIM // 2 + 8  # SQ8 (the old default): DIM + 8

    class Live(dict):  # the source and the test's live set are the same mapping
        def __delitem__(self, key):
            super().__delitem__(key)
            store.pop(key, None)

        def update(self, pairs):
            pairs = list(pairs)
            super().update(pairs)
            store.update(pairs)

    live = Live(store)
    gone = _churn(idx, live, rounds=20, seed=12)  # 10x the index size in changes
    assert idx.nbytes() == len(live) * (DIM // 2 + 8)  # memory does not grow with churn
    q = _queries(dict(live), 13, 100)
    got = [{i for i, _ in hits} for hits in idx.search(q, 10)]
    recall = float(np.mean([len(g & w) / 10 for g, w in zip(got, _oracle(live, q, 10))]))
    assert recall >= 0.95, recall
    _check_no_stale(idx, live, q[:20], 30, gone)  # exact scores, no removed id


def test_profile_store_on_default_codes_ranks_users_by_their_exact_vectors() -> None:
    pp = ProfileParams()
    store = ProfileStore(DIM, _default_spec(300))
    rng = np.random.default_rng(3)
    truth: dict[str, np.ndarray] = {}
    for p in range(2):
        st = PartitionState.empty(p, DIM, pp, BanditParams(), 100, "m")
        users = [f"p{p}u{k}" for k in range(500)]
        ev_users = [u for u in users for _ in range(3)]
        ts = 1_700_000_000_000 + rng.integers(0, 10**9, len(ev_users))
        st.profiles.apply(ev_users, ts, np.ones(len(ev_users)), _vecs(20 + p, len(ev_users)))
        store.add(st)
        truth.update(zip(users, st.profiles.vectors(users)))
    assert factory_of(store.index).endswith(",SQ4")
    keys = sorted(truth)
    mat = np.stack([truth[k] for k in keys]).astype(np.float64)
    q = _queries(truth, 4, 40)
    for qi in range(len(q)):
        hits = store.search(q[qi], 10)
        exact = mat @ q[qi].astype(np.float64)
        best = np.sort(exact)[::-1][:10]
        for u, score in hits:  # every score is the user's exact one
            assert score == pytest.approx(float(np.dot(truth[u].astype(np.float64), q[qi])),
                                          abs=1e-4)
        # the top 10 found are the exact top 10 (ties aside), or almost: recall on scores
        found = np.sort([s for _, s in hits])[::-1]
        assert len(found) == 10 and np.mean(found >= best[-1] - 1e-5) >= 0.9
