"""The IVF index's own slot -> list array (index/ivf.py: ``IvfIndex._list_at``) always says what
FAISS's hashtable direct map says, through every path that writes the IVF: the inline and the
background build, a background training's catch-up of rows changed meanwhile, inserts, updates
that stay or move, removals, a slot reused, a retraining at 4x and the fall back to exact.

An update's local search starts from that array (one ``direct_map.get`` call from Python per
updated vector took ~2.5 us, a third of an update); a wrong entry would start it from a list
the vector is not in, and leave the old entry behind.
"""

from __future__ import annotations

import numpy as np
import pytest

from index.bench import Gen
from index.ivf import IvfIndex

DIM = 64


def _check(ix: IvfIndex) -> None:
    if ix._ivf is None:
        return
    ivf = ix._ivf
    assert int(ivf.ntotal) == len(ix)  # one entry per live id, none left behind
    get = ivf.direct_map.get
    for slot in ix._slot_of.values():
        assert ix._list_at[slot] == get(slot) >> 32, slot
    free = np.setdiff1d(np.arange(len(ix._id_at)), list(ix._slot_of.values()))
    assert (ix._list_at[free] == -1).all()


@pytest.mark.parametrize("background", [False, True])
def test_the_slot_to_list_array_agrees_with_faiss_through_every_path(background: bool) -> None:
    g = Gen(DIM, seed=5)
    rng = np.random.default_rng(6)
    x = g.items(6_000)
    ids = [f"u{j}" for j in range(len(x))]
    ix = IvfIndex(DIM, "users", exact_below=1_000, background=background, seed=2)
    ix.upsert(ids[:1_200], x[:1_200])  # trains (inline, or starts the copy)
    for step in range(60):
        if background and step == 3 and ix._job is not None:  # changes during a training
            while ix._job.copied < ix._job.slots.size:
                ix._poll()
            assert ix._job.thread is not None
            ix._job.thread.join()
        live = list(ix._slot_of)
        pick = rng.choice(len(live), 40, replace=False)
        upd = [live[j] for j in pick[:30]]
        # small drifts (stay) and large ones (move to another list)
        drift = rng.choice([0.05, 2.0], len(upd))[:, None]
        cur = np.stack([x[int(u[1:])] for u in upd])
        new = cur + drift * g.items(len(upd))
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        for u, v in zip(upd, new):
            x[int(u[1:])] = v
        ix.remove([live[j] for j in pick[30:]])  # their slots are reused by the inserts
        _check(ix)
        lo = 1_200 + 80 * step
        ix.upsert(upd + ids[lo:lo + 80], np.concatenate([new, x[lo:lo + 80]]))
        _check(ix)
    assert ix.wait_built(60)
    _check(ix)
    assert ix.factory.startswith("IVF") and ix.trainings >= 2  # retrained at 4x
    ix.remove(list(ix._slot_of)[: len(ix) - 400])  # below exact_below / 2: exact again
    assert ix._ivf is None and (ix._list_at == -1).all()
    ix.upsert(ids[:1_500], x[:1_500])  # and an IVF again
    assert ix.wait_built(60)
    _check(ix)
