"""An IVF's trained parts survive a restart: ``IvfIndex.state`` keeps the centroids, the
scalar quantiser's ranges, the calibration and each vector's list; ``from_state`` installs the
IVF from them at once (no k-means, no calibration) and ``adopt_trained`` does it for an index
filled another way (the users index, from the profile tables).  Kept parts that do not check
out are refused and the index trains as before: never a wrong or crashing index."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from index import IvfIndex, adopt_trained, ivf_installs, trained_state, training_deferred
from stream.worker.snapshots import pack, unpack

DIM = 24
N = 3000
BELOW = 1000


def _data(n: int = N, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((40, DIM)).astype(np.float32)
    x = c[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, DIM)).astype(np.float32)
    return [f"v{i}" for i in range(n)], x / np.linalg.norm(x, axis=1, keepdims=True)


def _queries(x: np.ndarray, m: int = 40) -> np.ndarray:
    rng = np.random.default_rng(7)
    q = x[rng.integers(0, len(x), m)] + 0.2 * x[rng.integers(0, len(x), m)]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _source(ids: list[str], x: np.ndarray) -> Any:
    row = {i: r for r, i in enumerate(ids)}
    return lambda got: x[[row[i] for i in got]] if got else np.zeros((0, DIM), np.float32)


def _built(codes: str, ids: list[str], x: np.ndarray) -> IvfIndex:
    src = None if codes == "Flat" else _source(ids, x)
    idx = IvfIndex(DIM, "t", exact_below=BELOW, background=False, codes=codes, source=src)
    idx.upsert(ids, x)
    assert idx.trainings == 1 and idx.factory.startswith("IVF")
    return idx


@pytest.mark.parametrize("codes", ["Flat", "SQ4"])
def test_from_state_installs_the_kept_ivf_at_once_and_answers_as_before(codes: str) -> None:
    ids, x = _data()
    a = _built(codes, ids, x)
    st = unpack(pack(a.state()))  # through the snapshot codec: data only
    cur = x.copy()  # the store a lossy index re-ranks from (the profile tables)
    src = None if codes == "Flat" else _source(ids, cur)
    # a background index: without the kept parts it would search exactly while training
    b = IvfIndex.from_state(st, exact_below=BELOW, background=True, codes=codes, source=src)
    assert not b.building and b.factory == a.factory
    assert (b.trainings, b.adoptions, ivf_installs(b)) == (0, 1, 1)
    assert b.probes == a.probes and b.calibration == a.calibration
    q = _queries(x)
    assert b.search(q, 10) == a.search(q, 10)
    # it goes on like the original: an update and a removal are seen at once
    cur[1] = x[2]
    b.upsert(["v1"], x[2:3])
    b.remove(["v5"])
    hits = b.search(x[2:3], 3)[0]
    assert {"v1", "v2"} <= {h for h, _ in hits} and "v5" not in b.ids()


def _mangled(st: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {**st, "ivf": {**st["ivf"], **change}}


@pytest.mark.parametrize("change", [
    {"centroids": "not an array"},
    {"centroids": np.zeros((5, DIM + 1), dtype=np.float32)},
    {"centroids": np.full((5, DIM), np.nan, dtype=np.float32)},
    {"centroids": np.zeros((5, DIM), dtype=np.float64)},
    {"sq": np.zeros(3, dtype=np.float32)},
    {"sq": None},
    {"probes": 10 ** 6},
    {"trained_n": 0},
    {"codes": "SQ8"},
])
def test_kept_parts_that_do_not_check_out_are_refused_and_the_index_trains(
        change: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    ids, x = _data()
    st = _mangled(_built("SQ4", ids, x).state(), **change)
    with caplog.at_level(logging.WARNING):
        b = IvfIndex.from_state(st, exact_below=BELOW, background=False, codes="SQ4",
                                source=_source(ids, x))
    assert (b.trainings, b.adoptions) == (1, 0) and b.factory.startswith("IVF")
    if "codes" not in change:
        assert "kept IVF centroids not used" in caplog.text
    exact = [set(ids[r] for r in np.argsort(-(x @ qi))[:10]) for qi in _queries(x)]
    got = [{h for h, _ in hits} for hits in b.search(_queries(x), 10)]
    assert np.mean([len(g & e) / 10 for g, e in zip(got, exact)]) >= 0.9


def test_lists_out_of_range_are_reassigned_not_trusted() -> None:
    ids, x = _data()
    a = _built("Flat", ids, x)
    lists = a.state()["ivf"]["lists"].copy()
    lists[0] = 10 ** 6
    b = IvfIndex.from_state(_mangled(a.state(), lists=lists), exact_below=BELOW,
                            background=False)
    assert b.adoptions == 1 and b._list_at.max() < b._nlist
    assert b.search(_queries(x), 10) == a.search(_queries(x), 10)


def test_adopt_in_the_background_catches_up_changes_made_meanwhile() -> None:
    ids, x = _data()
    kept = trained_state(_built("SQ4", ids, x))
    assert kept is not None
    cur = x.copy()
    b = IvfIndex(DIM, "users", exact_below=BELOW, background=True, codes="SQ4",
                 source=_source(ids, cur))
    with training_deferred(b):  # as an assignment loads: no training of its own meanwhile
        b.upsert(ids, cur)
        assert adopt_trained(b, kept) and b.building and b.factory == "Flat"
    cur[:50] = cur[100:150]  # changed while the assignment runs on its thread
    b.upsert(ids[:50], cur[:50])
    b.remove(ids[200:210])
    assert b.wait_built(60) and b.factory.startswith("IVF") and b.trainings == 0
    assert not adopt_trained(b, kept)  # only while no IVF is installed
    for i in (0, 10, 49):
        top = {h for h, _ in b.search(cur[i:i + 1], 2)[0]}
        assert top == {ids[i], ids[100 + i]}
    assert not {h for hits in b.search(cur[200:210], 5) for h, _ in hits} & set(ids[200:210])


def test_too_few_vectors_stay_exact() -> None:
    ids, x = _data()
    kept = trained_state(_built("Flat", ids, x))
    assert kept is not None
    small = IvfIndex(DIM, "t", exact_below=BELOW, background=False)
    small.upsert(ids[: BELOW // 2 - 1], x[: BELOW // 2 - 1])
    assert not adopt_trained(small, kept) and small.factory == "Flat"
