"""Issue 12, one copy of each vector: above the exact threshold the IVF is the only store
(``Flat`` codes) or holds compressed codes re-ranked from an external source (the profile
tables); memory does not grow with churn; the index metric names the factory string."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Gauge

from index import IndexSpec, IvfIndex, factory_of, make_index
from stream.core.bandit import BanditParams
from stream.core.profile import ProfileParams
from stream.worker.indexes import publish_index_info
from stream.worker.profiles import ProfileStore
from stream.worker.state import PartitionState
from tests.unit.test_index_ann import DIM, _check_no_stale, _oracle, _queries, _vecs

pytestmark = pytest.mark.unit


def _churn(idx: IvfIndex, live: dict[str, np.ndarray], rounds: int, seed: int) -> set[str]:
    """Updates, removals and re-inserts of ``rounds`` x 10% of the ids, size kept constant."""
    rng = np.random.default_rng(seed)
    gone: set[str] = set()
    for r in range(rounds):
        keys = sorted(live)
        upd = [keys[j] for j in rng.choice(len(keys), len(keys) // 10, replace=False)]
        v = _vecs(1000 + r, len(upd))
        live.update(zip(upd, v))  # the source first, as ProfileStore changes the tables first
        idx.upsert(upd, v)
        out = [keys[j] for j in rng.choice(len(keys), len(keys) // 10, replace=False)]
        for i in out:
            del live[i]
        assert idx.remove(out) == len(out)
        gone.update(out)
        new = [f"r{r}_{n}" for n in range(len(out))]
        v = _vecs(2000 + r, len(new))
        live.update(zip(new, v))
        idx.upsert(new, v)
    return gone - set(live)


def test_flat_codes_make_the_ivf_the_only_store_and_churn_does_not_grow_it() -> None:
    idx = IvfIndex(DIM, name="items", exact_below=500, nprobe=12, background=False)
    n = 2000
    ids = [f"i{k}" for k in range(n)]
    v = _vecs(1, n)
    idx.upsert(ids, v)
    assert idx.factory.startswith("IVF") and idx.factory.endswith(",Flat")
    assert idx._mat is None  # no exact matrix beside the IVF: one copy
    live = dict(zip(ids, v))
    before = idx.nbytes()
    assert before == n * (DIM * 4 + 8)
    gone = _churn(idx, live, rounds=30, seed=3)  # 10x the index size in changes
    assert idx.nbytes() == before and len(idx._id_at) <= n + n // 10  # slots are reused
    assert idx._ivf.ntotal == len(live) == len(idx)
    for i in list(live)[:50]:
        np.testing.assert_array_equal(idx.get(i), live[i])  # reconstructed from the IVF
    q = _queries(live, 5, 100)
    got = [{i for i, _ in hits} for hits in idx.search(q, 10)]
    recall = float(np.mean([len(g & w) / 10 for g, w in zip(got, _oracle(live, q, 10))]))
    assert recall >= 0.95, recall
    _check_no_stale(idx, live, q[:20], 30, gone)
    st = idx.state()
    assert sorted(st["ids"]) == sorted(live) and st["vectors"].dtype == np.float32
    # shrinking below half the threshold goes back to the exact matrix, from the IVF's vectors
    idx.remove(sorted(live)[: len(live) - 200])
    assert idx.factory == "Flat" and idx._mat is not None
    for i in idx.ids():
        np.testing.assert_array_equal(idx.get(i), live[i])


def test_compressed_codes_rerank_exactly_from_the_source_and_keep_no_copy() -> None:
    store: dict[str, np.ndarray] = {}
    reads: list[int] = []

    def source(ids):
        reads.append(len(ids))
        return np.stack([store.get(i, np.zeros(DIM, np.float32)) for i in ids])

    idx = IndexSpec("auto", exact_below=500, nprobe=12, background=False,
                    codes="SQ8").make(DIM, "users", source=source)
    assert isinstance(idx, IvfIndex)
    n = 2000
    ids = [f"u{k}" for k in range(n)]
    v = _vecs(4, n)
    store.update(zip(ids, v))
    idx.upsert(ids, v)
    assert factory_of(idx).endswith(",SQ8") and idx._mat is None
    assert idx.nbytes() == n * (DIM + 8)  # one byte per component, no float32 copy

    class Live(dict):  # the source and the test's live set are the same mapping
        def __delitem__(self, key):
            super().__delitem__(key)
            store.pop(key, None)

        def update(self, pairs):
            pairs = list(pairs)
            super().update(pairs)
            store.update(pairs)

    live = Live(store)
    gone = _churn(idx, live, rounds=20, seed=6)
    assert dict(live).keys() == store.keys()
    assert idx.nbytes() == len(live) * (DIM + 8)
    q = _queries(dict(live), 7, 100)
    got = [{i for i, _ in hits} for hits in idx.search(q, 10)]
    recall = float(np.mean([len(g & w) / 10 for g, w in zip(got, _oracle(live, q, 10))]))
    assert recall >= 0.95, recall
    _check_no_stale(idx, live, q[:20], 30, gone)  # scores are exact: re-ranked from the source
    some = sorted(live)[0]
    np.testing.assert_array_equal(idx.get(some), store[some])
    assert reads  # the exact vectors came from the source


def test_profile_store_searches_the_tables_without_a_copy() -> None:
    pp, dim = ProfileParams(), DIM
    spec = IndexSpec("auto", exact_below=300, nprobe=16, background=False, codes="SQ8")
    store = ProfileStore(dim, spec)
    rng = np.random.default_rng(0)
    truth: dict[str, np.ndarray] = {}
    for p in range(3):
        st = PartitionState.empty(p, dim, pp, BanditParams(), 100, "m")
        users = [f"p{p}u{k}" for k in range(400)]
        ev_users = [u for u in users for _ in range(3)]
        ts = 1_700_000_000_000 + rng.integers(0, 10**9, len(ev_users))
        st.profiles.apply(ev_users, ts, np.ones(len(ev_users)), _vecs(p, len(ev_users)))
        store.add(st)
        truth.update(zip(users, st.profiles.vectors(users)))
    idx = store.index
    assert isinstance(idx, IvfIndex) and factory_of(idx).startswith("IVF") and idx._mat is None
    for u in list(truth)[:20]:
        np.testing.assert_array_equal(store.vector(u), truth[u])
    victim = "p1u7"
    store.erase(store.owner(victim), victim)
    del truth[victim]
    q = _queries(truth, 1, 50)
    got = [{i for i, _ in hits} for hits in idx.search(q, 10)]
    recall = float(np.mean([len(g & w) / 10 for g, w in zip(got, _oracle(truth, q, 10))]))
    assert recall >= 0.95, recall
    _check_no_stale(idx, truth, q[:10], 20, {victim})
    store.drop(2)
    assert all(not u.startswith("p2") for u in idx.ids())


def test_index_info_metric_names_the_factory_string_now() -> None:
    reg = CollectorRegistry()
    gauge = Gauge("profiles_index_info", "x", ["index", "kind"], registry=reg)
    items = make_index(DIM, "items", "auto", exact_below=100, background=False)
    users = make_index(DIM, "users", "flat")
    publish_index_info(gauge, users=users, items=items)
    assert reg.get_sample_value("profiles_index_info", {"index": "items", "kind": "Flat"}) == 1
    items.upsert([f"i{k}" for k in range(400)], _vecs(2, 400))
    publish_index_info(gauge, users=users, items=items)
    kind = factory_of(items)
    assert kind.startswith("IVF")
    assert reg.get_sample_value("profiles_index_info", {"index": "items", "kind": kind}) == 1
    assert reg.get_sample_value("profiles_index_info", {"index": "items", "kind": "Flat"}) is None
    assert reg.get_sample_value("profiles_index_info", {"index": "users", "kind": "Flat"}) == 1


def test_settings_choose_the_users_codes() -> None:
    from stream.core.errors import ConfigError
    from stream.settings import Settings
    from stream.worker.indexes import index_spec, users_index_spec

    s = Settings.from_env({"PROFILES_INDEX_USER_CODES": "SQ4"})
    assert users_index_spec(s).codes == "SQ4" and index_spec(s).codes == "Flat"
    assert users_index_spec(Settings()).codes == "SQ4"
    with pytest.raises(ConfigError, match="index_user_codes must be Flat, SQfp16, SQ8, SQ6 or SQ4"):
        Settings.from_env({"PROFILES_INDEX_USER_CODES": "PQ16"})
    with pytest.raises(ValueError, match="unknown IVF codes"):
        IvfIndex(DIM, codes="PQ16")
