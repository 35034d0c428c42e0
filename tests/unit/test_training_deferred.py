"""index.training_deferred: an IVF index trains once a block of loads ends, at its size then,
not at the exact threshold and again at REGROW times that."""

from __future__ import annotations

import numpy as np

from index import FlatIndex, IvfIndex, training_deferred
from index.ivf import REGROW

DIM = 16


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _load(idx: IvfIndex, parts: int, per: int) -> None:
    for p in range(parts):
        idx.upsert([f"u{p}-{i}" for i in range(per)], _vectors(per, p))


def test_loads_in_a_deferred_block_train_once_at_their_total_size() -> None:
    per, parts = 400, 4  # each load alone crosses the threshold (300); all: 1,600 = 5.3x it
    plain = IvfIndex(DIM, name="plain", exact_below=300, background=False)
    _load(plain, parts, per)
    assert plain.trainings == 2  # at the first load's 400, again at >= 4 x 400

    held = IvfIndex(DIM, name="held", exact_below=300, background=False)
    with training_deferred(held):
        _load(held, parts, per)
        assert held.trainings == 0 and held.factory == "Flat"  # exact meanwhile
        q = _vectors(5, 99)
        assert [len(h) for h in held.search(q, 10)] == [10] * 5
    assert held.trainings == 1 and held.factory.startswith("IVF")
    assert len(held) == per * parts
    assert REGROW * 400 <= per * parts  # the plain index's second training was due


def test_nested_blocks_train_when_the_outer_one_ends() -> None:
    idx = IvfIndex(DIM, name="nested", exact_below=300, background=False)
    with training_deferred(idx):
        with training_deferred(idx):
            _load(idx, 1, 400)
        assert idx.trainings == 0
    assert idx.trainings == 1


def test_a_flat_index_has_nothing_to_defer() -> None:
    idx = FlatIndex(DIM, name="flat")
    with training_deferred(idx):
        idx.upsert(["a"], _vectors(1, 0))
    assert len(idx) == 1
