"""An index that grows past ``REGROW`` times its training while that training runs trains
again once it is installed (issue 12: a 10^6-item catalogue bulk-loaded while the first
training, at 2*10^4 items, ran kept that training's 512 lists, as no later upsert came to start
the next one: item search p50 16.6 ms at 10^6 items, scanning ~10^5 vectors)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from index.ivf import IvfIndex, choose_nlist

pytestmark = pytest.mark.unit

DIM = 16


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_training_outgrown_while_it_ran_is_followed_by_the_next() -> None:
    idx = IvfIndex(DIM, "items", exact_below=300, background=True, seed=1)
    hold = threading.Event()
    build = idx._build

    def held_build(job, background):  # type: ignore[no-untyped-def]
        hold.wait(30)  # the first training runs until the catalogue below is in
        build(job, background)

    idx._build = held_build  # type: ignore[method-assign]
    idx.upsert([f"i{k}" for k in range(300)], _vectors(300, 0))
    assert idx.building
    idx.upsert([f"i{k}" for k in range(300, 3300)], _vectors(3000, 1))  # 11x while it runs
    hold.set()
    assert idx.wait_built(60)
    assert idx.factory == f"IVF{choose_nlist(3300)}_HNSW32,Flat"  # before: IVF7 (300)
    assert idx.trainings == 2 and len(idx) == 3300
    q = _vectors(5, 2)
    got = idx.search(q, 10)
    exact = np.argsort(-(q @ np.vstack([_vectors(300, 0), _vectors(3000, 1)]).T), axis=1)[:, :10]
    assert all(len(set(g) & {f"i{k}" for k in e}) >= 5 for g, e in
               zip(([i for i, _ in row] for row in got), exact.tolist()))
