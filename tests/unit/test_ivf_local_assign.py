"""The IVF's coarse assignment of updated vectors (index/ivf.py: ``Coarse``, ``local_lists``):
each update goes to a list that is a local optimum among its neighbour centroids or is its best
over all centroids; searches stay exact-ranked and never stale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from index.ivf import COARSE_NEIGHBOURS, Coarse, IvfIndex, local_lists

DIM = 32


def _clustered(rng: np.random.Generator, n: int, centres: int = 120) -> np.ndarray:
    c = rng.standard_normal((centres, DIM)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.7 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _index(n: int, seed: int) -> tuple[IvfIndex, np.ndarray, list[str], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    v = _clustered(rng, n)
    ids = [f"u{i}" for i in range(n)]
    store = dict(zip(ids, v, strict=True))

    def source(us: Sequence[str]) -> np.ndarray:
        return np.stack([store.get(u, np.zeros(DIM, np.float32)) for u in us])

    ix = IvfIndex(DIM, "users", exact_below=500, background=False, codes="SQ8", source=source,
                  seed=seed)
    ix.upsert(ids, v)
    ix.wait_built()
    assert ix.factory.startswith("IVF")
    return ix, v, ids, store


def test_coarse_neighbours_are_the_nearest_centroids_itself_first() -> None:
    ix, *_ = _index(3000, 0)
    coarse = Coarse(ix._ivf)
    c = coarse.centroids
    assert c.shape == (ix._nlist, DIM)
    g = c.astype(np.float64) @ c.T.astype(np.float64)
    k = min(COARSE_NEIGHBOURS, len(c) - 1)
    assert coarse.neighbours.shape == (len(c), k + 1)
    assert (coarse.neighbours[:, 0] == np.arange(len(c))).all()
    for i in range(len(c)):
        others = np.delete(np.arange(len(c)), i)
        kth = np.sort(g[i, others])[::-1][k - 1]  # the k-th best other centroid's score
        got = g[i, coarse.neighbours[i, 1:]]
        assert (got >= kth - 1e-5).all()
        assert len(set(coarse.neighbours[i].tolist())) == k + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_local_lists_never_score_below_the_start_and_stop_at_a_local_optimum(seed: int) -> None:
    ix, v, *_ = _index(3000, seed)
    coarse = Coarse(ix._ivf)
    rng = np.random.default_rng(seed + 10)
    x = _clustered(rng, 400)
    start = rng.integers(0, len(coarse.centroids), 400)
    lists, scores, moving = local_lists(coarse, x, start, rounds=50)
    c64 = coarse.centroids.astype(np.float64)
    own = np.einsum("md,md->m", x.astype(np.float64), c64[lists])
    assert np.allclose(scores, own, atol=1e-5)
    at_start = np.einsum("md,md->m", x.astype(np.float64), c64[start])
    assert (own >= at_start - 1e-5).all()
    assert not moving.any()  # 50 rounds: every row settled
    for i in range(400):  # a local optimum: no neighbour of its list scores higher
        nb = coarse.neighbours[lists[i]]
        assert own[i] >= (c64[nb] @ x[i].astype(np.float64)).max() - 1e-5


@pytest.mark.parametrize("drift", [0.05, 0.5, 0.9])
def test_updates_go_to_a_list_no_worse_than_staying_local_or_hnsw(drift: float) -> None:
    """After updates of every size, each updated vector sits in a list that is a local optimum
    (no neighbour centroid scores higher) or is its best list over all centroids; the IVF holds every live vector once, and searches find each updated one."""
    ix, v, ids, store = _index(3000, 3)
    rng = np.random.default_rng(4)
    coarse = ix._coarse
    assert coarse is not None
    for _ in range(5):
        pick = rng.choice(len(ids), 300, replace=False)
        nv = (1 - drift) * v[pick] + drift * v[rng.integers(0, len(ids), 300)]
        nv = (nv / np.linalg.norm(nv, axis=1, keepdims=True)).astype(np.float32)
        v[pick] = nv
        for j, i in enumerate(pick.tolist()):
            store[ids[i]] = nv[j]
        ix.upsert([ids[i] for i in pick], nv)
        slots = np.array([ix._slot_of[ids[i]] for i in pick], dtype=np.int64)
        lists = np.array([ix._ivf.direct_map.get(int(s)) >> 32 for s in slots])
        c64 = coarse.centroids.astype(np.float64)
        x64 = nv.astype(np.float64)
        own = np.einsum("md,md->m", x64, c64[lists])
        best_nb = np.array([(c64[coarse.neighbours[lst]] @ x64[j]).max()
                            for j, lst in enumerate(lists.tolist())])
        theirs = (x64 @ c64.T).max(axis=1)  # the best list over all centroids
        ok = (own >= best_nb - 1e-5) | (own >= theirs - 1e-5)
        assert ok.all(), np.flatnonzero(~ok)
    assert ix._ivf.ntotal == len(ix) == len(ids)
    # each updated vector is found by a search for itself, with its current score
    q = v[pick[:50]]
    hits = ix.search(q, 1)
    assert [h[0][0] for h in hits] == [ids[i] for i in pick[:50]]
    assert np.allclose([h[0][1] for h in hits], np.einsum("md,md->m", q, q), atol=1e-5)


def test_recall_after_churn_matches_exact_search() -> None:
    ix, v, ids, store = _index(4000, 5)
    rng = np.random.default_rng(6)
    for _ in range(10):
        pick = rng.choice(len(ids), 400, replace=False)
        nv = 0.7 * v[pick] + 0.3 * v[rng.integers(0, len(ids), 400)]
        nv = (nv / np.linalg.norm(nv, axis=1, keepdims=True)).astype(np.float32)
        v[pick] = nv
        for j, i in enumerate(pick.tolist()):
            store[ids[i]] = nv[j]
        ix.upsert([ids[i] for i in pick], nv)
    q = v[rng.choice(len(ids), 100, replace=False)]
    truth = np.argsort(-(q @ v.T), axis=1)[:, :10]
    got = ix.search(q, 10)
    recall = np.mean([len({ids[j] for j in truth[i]} & {u for u, _ in got[i]}) / 10
                      for i in range(len(q))])
    assert recall >= 0.95


def test_coarse_neighbours_do_not_depend_on_the_chunk_of_centroid_rows() -> None:
    """The centroids' neighbour lists are computed ``chunk`` rows at a time (all at once is
    nlist^2 floats: 1 GB at 16,384 lists); any chunk gives the same lists."""
    ix, *_ = _index(3000, 7)
    whole = Coarse(ix._ivf, chunk=1 << 20)
    for chunk in (1, 7, 64):
        part = Coarse(ix._ivf, chunk=chunk)
        assert np.array_equal(part.neighbours, whole.neighbours)
        assert np.array_equal(part.centroids, whole.centroids)
