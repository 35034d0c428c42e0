"""ANN index kinds (``auto``/``ivf``: IvfIndex): recall under churn against brute force, delete
and update correctness for every kind, the automatic choice by size, background training."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from index import INDEX_KINDS, IndexSpec, IvfIndex, VectorIndex, factory_of, make_index
from index.ivf import choose_nlist

pytestmark = pytest.mark.unit

DIM = 16
CENTRES = np.random.default_rng(123).standard_normal((40, DIM)).astype(np.float32)


def _vecs(seed: int, n: int) -> np.ndarray:
    """Clustered unit vectors (like item embeddings: topics plus noise)."""
    rng = np.random.default_rng(seed)
    v = CENTRES[rng.integers(0, len(CENTRES), n)] + 0.6 * rng.standard_normal((n, DIM))
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _queries(live: dict[str, np.ndarray], seed: int, m: int) -> np.ndarray:
    """Profile-like queries: mixtures of a few live vectors plus noise, never a stored one."""
    rng = np.random.default_rng(seed)
    keys = sorted(live)
    mat = np.stack([live[k] for k in keys])
    q = np.stack([mat[rng.choice(len(keys), 3, replace=False)].sum(axis=0) for _ in range(m)])
    q = q + 0.1 * rng.standard_normal(q.shape)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _oracle(live: dict[str, np.ndarray], q: np.ndarray, k: int) -> list[set[str]]:
    keys = sorted(live)
    scores = q @ np.stack([live[i] for i in keys]).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [{keys[j] for j in row} for row in top]


def _check_no_stale(idx: VectorIndex, live: dict[str, np.ndarray], q: np.ndarray, k: int,
                    gone: set[str]) -> None:
    """No removed id; every score is the inner product with the id's *current* vector."""
    for qi, hits in enumerate(idx.search(q, k)):
        ids = [i for i, _ in hits]
        assert len(ids) == len(set(ids)) == min(k, len(live))
        for id_, score in hits:
            assert id_ not in gone and id_ in live, f"{id_} was removed"
            assert score == pytest.approx(float(live[id_] @ q[qi]), abs=1e-5), f"{id_} is stale"


churn_op = st.tuples(st.sampled_from(["insert", "update", "remove"]), st.integers(1, 600),
                     st.integers(0, 2**31))


# no shrinking: a failing example is printed as generated (shrinking re-runs it many times)
@settings(derandomize=True, deadline=None, max_examples=8,
          phases=(Phase.explicit, Phase.generate))
@given(ops=st.lists(churn_op, min_size=8, max_size=30), qseed=st.integers(0, 10_000))
def test_recall_at_10_after_heavy_churn(ops, qseed) -> None:
    # 3000 vectors, then churn (interleaved inserts, updates, removes) of ~3x that: nlist is
    # chosen from the size and only 12 of ~77 lists are probed, so recall is the IVF's own
    idx = IvfIndex(DIM, name="churn", exact_below=1000, nprobe=12, background=False)
    live: dict[str, np.ndarray] = {}
    gone: set[str] = set()
    first = _vecs(1, 3000)
    idx.upsert([f"i{n}" for n in range(3000)], first)
    live.update((f"i{n}", first[n]) for n in range(3000))
    next_id = 3000
    for kind, size, seed in ops * 3:
        rng = np.random.default_rng(seed)
        keys = sorted(live)
        if kind == "insert":
            ids = [f"i{next_id + n}" for n in range(size)]
            next_id += size
        else:
            # removals keep >= 1500 live, so the index stays above half its threshold (IVF)
            n = min(size, len(keys) - 1500) if kind == "remove" else min(size, len(keys))
            ids = [keys[j] for j in rng.choice(len(keys), max(n, 0), replace=False)]
        if kind == "remove":
            assert idx.remove(ids + ["never-there"]) == len(ids)
            for i in ids:
                del live[i]
            gone.update(ids)
        else:
            vecs = _vecs(seed, len(ids))
            idx.upsert(ids, vecs)
            live.update(zip(ids, vecs))
            gone.difference_update(ids)
    assert idx.factory.startswith("IVF"), idx.factory
    assert len(idx) == len(live) and sorted(idx.ids()) == sorted(live)
    assert idx._ivf.ntotal == len(live)  # removals free their rows: nothing grows with churn
    q = _queries(live, qseed, 100)
    got = [{i for i, _ in hits} for hits in idx.search(q, 10)]
    want = _oracle(live, q, 10)
    recall = float(np.mean([len(g & w) / 10 for g, w in zip(got, want)]))
    assert recall >= 0.95, recall
    _check_no_stale(idx, live, q[:20], 50, gone)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_removed_and_changed_vectors_are_never_returned(kind: str) -> None:
    idx = make_index(DIM, "del", kind, exact_below=100, background=False)
    n = 800
    v = _vecs(7, n)
    ids = [f"x{i}" for i in range(n)]
    idx.upsert(ids, v)
    expect = "Flat" if kind == "flat" else "IVF"
    assert factory_of(idx).startswith(expect)
    removed = ids[::5]
    changed = ids[1::5]
    assert idx.remove(removed) == len(removed)
    new = _vecs(8, len(changed))
    idx.upsert(changed, new)
    live = {i: v[j] for j, i in enumerate(ids) if i not in set(removed)}
    live.update(zip(changed, new))
    # query with the exact vectors that were removed or replaced: the best possible matches
    old = v[[ids.index(i) for i in removed + changed]]
    _check_no_stale(idx, live, old, 30, set(removed))
    for i in removed:
        assert i not in idx and idx.get(i) is None
    for i, vec in zip(changed, new):
        np.testing.assert_array_equal(idx.get(i), vec)
    # a removed id reused by a later insert comes back with its new vector only
    idx.upsert([removed[0]], new[:1])
    live[removed[0]] = new[0]
    _check_no_stale(idx, live, old[:5], 30, set(removed[1:]))
    # exclusions still hold on the ANN path, and k larger than the index gives everything
    (hits,) = idx.search(new[0], 5, exclude=[{removed[0], changed[0]}])
    assert {removed[0], changed[0]}.isdisjoint(i for i, _ in hits) and len(hits) == 5
    assert len(idx.search(new[0], 10_000)[0]) == len(live)


def test_auto_kind_is_exact_below_the_threshold_and_ivf_at_it() -> None:
    idx = make_index(DIM, "auto", "auto", exact_below=500, background=False)
    v = _vecs(3, 2200)
    idx.upsert([f"a{i}" for i in range(499)], v[:499])
    assert factory_of(idx) == "Flat"
    idx.upsert(["a499"], v[499:500])
    assert factory_of(idx) == f"IVF{choose_nlist(500)}_HNSW32,Flat"
    assert isinstance(idx, IvfIndex) and idx.trainings == 1
    idx.upsert([f"a{i}" for i in range(500, 1999)], v[500:1999])
    assert idx.trainings == 1  # grown < 4x: same centroids, lists updated live
    idx.upsert(["a1999"], v[1999:2000])
    assert idx.trainings == 2 and factory_of(idx) == f"IVF{choose_nlist(2000)}_HNSW32,Flat"
    idx.remove([f"a{i}" for i in range(1751)])  # 249 left: under half the threshold
    assert factory_of(idx) == "Flat" and len(idx) == 249
    assert factory_of(make_index(DIM, "f", "flat")) == "Flat"
    forced = make_index(DIM, "i", "ivf", background=False)
    forced.upsert([f"a{i}" for i in range(100)], v[:100])
    assert factory_of(forced).startswith("IVF")
    with pytest.raises(ValueError, match="unknown index kind 'hnsw2'"):
        IndexSpec("hnsw2")


def test_background_training_reconciles_changes_made_meanwhile() -> None:
    idx = IvfIndex(DIM, name="bg", exact_below=4000, nprobe=200, background=True)
    v = _vecs(11, 6000)
    ids = [f"b{i}" for i in range(6000)]
    idx.upsert(ids[:4000], v[:4000])  # starts a training on a copy of these 4000
    assert idx.building and factory_of(idx) == "Flat"
    live = dict(zip(ids[:4000], v[:4000]))
    # while it trains: updates, removals, inserts (possibly into freed slots)
    upd = _vecs(12, 500)
    idx.upsert(ids[:500], upd)
    live.update(zip(ids[:500], upd))
    idx.remove(ids[500:1000])
    for i in ids[500:1000]:
        del live[i]
    idx.upsert(ids[4000:6000], v[4000:6000])
    live.update(zip(ids[4000:6000], v[4000:6000]))
    q = _queries(live, 5, 10)
    _check_no_stale(idx, live, q, 20, set(ids[500:1000]))  # exact meanwhile
    job = idx._job
    assert job is not None and job.thread is not None
    job.thread.join(timeout=60)
    assert not job.thread.is_alive(), "IVF training did not finish in 60 s"
    # 3000 slots changed meanwhile: caught up CATCH_UP (1024) per call, installed on the third
    for _ in range(2):
        _check_no_stale(idx, live, q[:2], 20, set(ids[500:1000]))
        assert idx.building and factory_of(idx) == "Flat"
    _check_no_stale(idx, live, q[:2], 20, set(ids[500:1000]))
    assert not idx.building and factory_of(idx).startswith("IVF") and idx.trainings == 1
    assert idx.wait_built(timeout=0)
    ivf = idx._ivf
    assert ivf.ntotal == len(live) == len(idx)
    slot_of = idx._slot_of
    for i, vec in live.items():  # the IVF holds exactly the current vector of every live id
        np.testing.assert_array_equal(ivf.reconstruct(slot_of[i]), vec)
    _check_no_stale(idx, live, q, 20, set(ids[500:1000]))


def test_the_copy_for_a_training_is_taken_in_chunks_across_calls(monkeypatch) -> None:
    monkeypatch.setattr("index.ivf.COPY_CHUNK", 500)
    idx = IvfIndex(DIM, name="chunks", exact_below=2000, nprobe=200, background=True)
    v = _vecs(31, 2600)
    ids = [f"c{i}" for i in range(2600)]
    idx.upsert(ids[:2000], v[:2000])
    job = idx._job
    assert job is not None and job.copied == 500 and job.thread is None  # one chunk per call
    live = dict(zip(ids[:2000], v[:2000]))
    slot_of = idx._slot_of
    order = [i for i, _ in sorted(slot_of.items(), key=lambda t: t[1])]
    late = order[1500:1600]  # not copied yet: removed before their copy
    early = order[:100]  # copied already: changed after their copy
    assert idx.remove(late) == 100  # this call copies the second chunk
    assert job.copied == 1000 and job.thread is None
    _check_no_stale(idx, live, _queries(live, 0, 1), 10, set(late))  # exact; copies chunk 3
    for i in late:
        del live[i]
    upd = _vecs(32, 100)
    idx.upsert(early, upd)
    live.update(zip(early, upd))
    idx.upsert(ids[2000:2600], v[2000:2600])  # some reuse the freed slots
    live.update(zip(ids[2000:2600], v[2000:2600]))
    calls = 0
    while job.thread is None:
        _check_no_stale(idx, live, _queries(live, calls, 1), 10, set(late))
        calls += 1
    # 4 chunks, one per call (upsert, remove, search, update): the "late" slots were free when
    # copied (left out of the training), then reused by the new ids (caught up afterwards)
    assert calls == 0 and job.copied == 2000 and int((~job.live).sum()) == 100
    assert job.thread is not None
    job.thread.join(timeout=60)
    assert idx.wait_built(timeout=60) and factory_of(idx).startswith("IVF")
    assert idx._ivf.ntotal == len(live) == len(idx)
    for i, vec in live.items():
        np.testing.assert_array_equal(idx._ivf.reconstruct(slot_of[i]), vec)
    _check_no_stale(idx, live, _queries(live, 99, 5), 20, set(late))


def test_state_round_trip_rebuilds_the_ivf_with_or_without_its_kept_parts() -> None:
    spec = IndexSpec("auto", exact_below=300, background=False)
    idx = spec.make(DIM, "items")
    v = _vecs(21, 900)
    idx.upsert([f"s{i}" for i in range(900)], v)
    idx.remove([f"s{i}" for i in range(0, 900, 3)])
    state = idx.state()
    # data only: no FAISS blob; the IVF's trained parts as arrays and numbers
    assert set(state) == {"dim", "name", "ids", "vectors", "ivf"}
    assert {k: type(v).__name__ for k, v in state["ivf"].items()} == {
        "codes": "str", "centroids": "ndarray", "trained_n": "int", "probes": "int",
        "calibration": "list", "lists": "ndarray"}
    for state_of in (state, {k: v for k, v in state.items() if k != "ivf"}):
        clone = spec.from_state(state_of)  # with the kept centroids, and trained afresh
        assert factory_of(clone).startswith("IVF") and sorted(clone.ids()) == sorted(idx.ids())
        live = dict(zip(state["ids"], state["vectors"]))
        q = _queries(live, 2, 10)
        _check_no_stale(clone, live, q, 10, {f"s{i}" for i in range(0, 900, 3)})


def test_settings_choose_the_workers_index_kind() -> None:
    from stream.core.errors import ConfigError
    from stream.settings import Settings
    from stream.worker.catalog import ItemCatalog
    from stream.worker.indexes import index_spec

    s = Settings(index_kind="ivf", index_exact_below=1000, index_nprobe=7)
    spec = index_spec(s)
    assert (spec.kind, spec.exact_below, spec.nprobe) == ("ivf", 1000, 7)
    cat = ItemCatalog(DIM, s.limits(), "m", spec)
    assert isinstance(cat.index, IvfIndex)
    assert cat.load_state({"model": "m", "offsets": {}, "items": [],
                           "index": make_index(DIM, "items").state()})
    assert isinstance(cat.index, IvfIndex)
    assert index_spec(Settings()).kind == "auto"
    for bad, msg in ((dict(index_kind="hnsw2"), "index_kind must be auto, flat or ivf"),
                     (dict(index_exact_below=10), "index_exact_below must be >= 78"),
                     (dict(index_nprobe=-1), "index_nprobe must be >= 0")):
        with pytest.raises(ConfigError, match=msg):
            Settings(**bad)
