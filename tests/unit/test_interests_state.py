"""Multi-interest state in the partition snapshot (issue 12, per-user memory): the int8 codes
and float32 scales go through the data-only PSNAP2 archive bit for bit; a partition snapshot of
the earlier version (float16 ``means``) loads, and the next snapshot written on it is a base,
never a delta whose rows could not be merged onto the old layout."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.bandit import BanditParams
from stream.core.interests import InterestParams, dequantise, quantise
from stream.core.profile import ProfileParams
from stream.worker.deltas import continues, delta_doc, mark_serialised, merge
from stream.worker.snapshots import pack, unpack
from stream.worker.state import PartitionState

pytestmark = pytest.mark.unit

DIM = 24
T0 = 1_700_000_000_000
IP = InterestParams(k=3, threshold=0.6, half_life_ms=3_600_000.0)


def _state(seed: int, users: int = 30, events: int = 200) -> PartitionState:
    st = PartitionState.empty(0, DIM, ProfileParams(), BanditParams(), 100, "m", ip=IP)
    rng = np.random.default_rng(seed)
    us = [f"u{int(x)}" for x in rng.integers(0, users, events)]
    assert st.interests is not None
    st.interests.apply(us, T0 + rng.integers(0, 10**7, events), rng.random(events) + 0.1,
                       rng.standard_normal((events, DIM)))
    st.journal.users.update(us)
    return st


def _same(a: PartitionState, b: PartitionState) -> None:
    assert a.interests is not None and b.interests is not None
    assert a.interests.users() == b.interests.users()
    for u in a.interests.users():
        ra, rb = a.interests.raw(u), b.interests.raw(u)
        assert ra is not None and rb is not None
        assert ra[0] == rb[0] and np.array_equal(ra[1], rb[1]) and np.array_equal(ra[2], rb[2])


def _load(doc: dict) -> PartitionState:
    return PartitionState.from_dict(doc, DIM, ProfileParams(), BanditParams(), 100, ip=IP)


def test_codes_survive_the_data_only_archive_bit_for_bit() -> None:
    st = _state(1)
    doc = unpack(pack(st.to_dict()))
    got = doc["interests"]
    assert got["codes"].dtype == np.int8 and got["scales"].dtype == np.float32
    loaded = _load(doc)
    _same(st, loaded)
    assert continues(doc, loaded)  # same layout: deltas go on it


def test_a_float16_partition_snapshot_loads_and_the_next_snapshot_is_a_base() -> None:
    st = _state(2)
    doc = unpack(pack(st.to_dict()))
    old = dict(doc)
    it = dict(doc["interests"])
    # as the earlier version wrote it: float16 means, no codes / scales
    it["means"] = dequantise(it.pop("codes"), it.pop("scales")).astype(np.float16)
    old["interests"] = it
    old = unpack(pack(old))
    loaded = _load(old)
    assert loaded.interests is not None
    for r, u in enumerate(it["users"]):
        n = int(it["counts"][r])
        want = dequantise(*quantise(it["means"][r, :n].astype(np.float64)))
        raw = loaded.interests.raw(u)
        assert raw is not None and np.array_equal(raw[2], want)
    assert not continues(old, loaded)  # old layout: a delta could not merge onto it
    # a delta written on a loaded state of the current layout merges back exactly
    fresh = _load(doc)
    mark_serialised(fresh, "parent")
    assert fresh.interests is not None
    fresh.interests.apply(["u1", "new"], np.array([T0 + 10**8, T0 + 10**8]), np.ones(2),
                          np.ones((2, DIM)))
    fresh.interests.remove("u2")
    fresh.journal.users.update({"u1", "new", "u2"})
    merged = merge(doc, [unpack(pack(delta_doc(fresh)))])
    _same(fresh, _load(merged))
