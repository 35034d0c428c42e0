"""Issue 14 point 3: the batch paths of the hot path (one vectorised call per batch) give
exactly what the per-event paths they replace give.

- ``DedupeWindow.seen_many`` / ``add_many`` against the per-pair ``seen`` / ``add`` of the
  window and against the deque-and-set reference of tests/unit/test_dedupe_compact.py, under
  any interleaving with discards, snapshot round trips and evictions;
- the vectorised path of ``add_many`` is the one taken in the steady state (not only the
  one-by-one fallback);
- ``decode_events`` (columnar) against ``decode_event`` per message, for any mixture of valid
  and invalid messages, and the events it builds are real frozen ``Event`` objects."""

from __future__ import annotations

import random
from dataclasses import FrozenInstanceError, fields, replace

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from stream.core.dedupe import DedupeWindow, key_rows, pair_key
from stream.core.events import (
    Event,
    Limits,
    Reject,
    _decode_columns,
    decode_event,
    decode_events,
    with_user,
)
from tests.unit.test_dedupe_compact import _Reference

_BATCH_OPS = hst.lists(
    hst.tuples(hst.sampled_from(["batch", "batch", "batch", "add", "discard", "snap"]),
               hst.lists(hst.tuples(hst.integers(0, 6), hst.integers(0, 200)), max_size=40)),
    max_size=40)


def _pairs(spec: list[tuple[int, int]]) -> list[tuple[str, str]]:
    return [(f"u{u}", f"e{e}") for u, e in spec]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(capacity=hst.integers(0, 64), ops=_BATCH_OPS)
def test_batch_calls_equal_one_by_one_and_the_reference(capacity, ops) -> None:
    batched, single, ref = DedupeWindow(capacity), DedupeWindow(capacity), _Reference(capacity)
    for op, spec in ops:
        pairs = _pairs(spec)
        if op == "batch":
            keys = key_rows([pair_key(u, e) for u, e in pairs])
            # seen_many before the adds: what classify asks of the window
            got = batched.seen_many(keys, [e for _u, e in pairs]).tolist()
            assert got == [single.seen(u, e) for u, e in pairs]
            assert got == [ref.seen(u, e) for u, e in pairs]
            batched.add_many(keys)
            for u, e in pairs:
                single.add(u, e)
                ref.add(u, e)
        elif op == "add":
            for w in (batched, single, ref):
                for u, e in pairs[:3]:
                    w.add(u, e)
        elif op == "discard":
            for w in (batched, single, ref):
                for u, e in pairs[:3]:
                    w.discard(u, e)
        else:  # a snapshot round trip
            batched = DedupeWindow.from_state(batched.state(), capacity)
            single = DedupeWindow.from_state(single.state(), capacity)
            ref = _Reference.from_state(ref.state(), capacity)
        assert batched.state() == single.state() == ref.state()
        assert len(batched) == len(ref) and batched.appended == single.appended
        probe = _pairs([(u, e) for u in range(7) for e in range(0, 201, 7)]) + pairs
        keys = key_rows([pair_key(u, e) for u, e in probe])
        assert batched.seen_many(keys, [e for _u, e in probe]).tolist() == \
            [ref.seen(u, e) for u, e in probe]
        assert [batched.seen(u, e) for u, e in probe] == [ref.seen(u, e) for u, e in probe]


def test_the_steady_state_takes_the_vectorised_path(monkeypatch) -> None:
    """Batches of new pairs into a full window: every add_many is vectorised (the one-by-one
    ``_add`` is never called) and the window equals one fed pair by pair."""
    w, single = DedupeWindow(1000), DedupeWindow(1000)
    calls = 0
    real = DedupeWindow._add

    def counting(self: DedupeWindow, key: bytes) -> None:
        nonlocal calls
        if self is w:
            calls += 1
        real(self, key)

    monkeypatch.setattr(DedupeWindow, "_add", counting)
    for b in range(12):  # 12 x 250 = 3 times the window: it fills, grows and evicts
        pairs = [(f"u{(b * 250 + i) % 97}", f"e{b * 250 + i}") for i in range(250)]
        w.add_many(key_rows([pair_key(u, e) for u, e in pairs]))
        for u, e in pairs:
            single.add(u, e)
        assert w.state() == single.state()
    assert calls == 0
    assert len(w) == 1000 and w.appended == 3000
    assert w.seen("u0", "e2910") and not w.seen("u0", "e0")


# ---------------------------------------------------------------- columnar decode
_FIELD = hst.one_of(
    hst.none(), hst.integers(-3, 3), hst.booleans(), hst.floats(allow_nan=False),
    hst.text(max_size=4), hst.sampled_from(["", "x" * 70, "é" * 70, "view"]),
    hst.lists(hst.integers(0, 2), max_size=2))


def _good(i: int, kind: int) -> dict:
    """A valid event of each shape: item events with and without optional fields, a search."""
    ev: dict = {"event_id": f"e{i}", "user_id": f"u{i % 5}", "ts": 1_700_000_000_000 + i}
    if kind == 0:
        ev |= {"type": "view", "item_id": f"i{i % 3}", "position": i % 4}
    elif kind == 1:
        ev |= {"type": "click", "item_id": "i1", "arm": "a1", "propensity": 0.5,
               "query": "red shoe"}
    elif kind == 2:
        ev |= {"type": "search", "query": "red shoes"}
    else:
        ev |= {"type": "purchase", "item_id": "i2", "propensity": 1}
    return ev


_MESSAGES = hst.lists(
    hst.one_of(
        hst.builds(lambda i, k: orjson.dumps(_good(i, k)), hst.integers(0, 50),
                   hst.integers(0, 3)),
        # a valid event with one field replaced by anything (often a reject)
        hst.builds(lambda i, k, f, v: orjson.dumps(_good(i, k) | {f: v}), hst.integers(0, 50),
                   hst.integers(0, 3),
                   hst.sampled_from(["event_id", "user_id", "type", "ts", "item_id", "query",
                                     "arm", "position", "propensity"]), _FIELD),
        hst.sampled_from([b"", b"{", b"[1]", b"null", b'{"type": "view"}', b"x" * 70_000])),
    max_size=30)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(raws=_MESSAGES, clocks=hst.lists(hst.one_of(hst.none(), hst.integers(0, 2 * 10**12)),
                                        min_size=30, max_size=30))
def test_the_columnar_decode_equals_the_per_event_decode(raws, clocks) -> None:
    limits = Limits(max_id_bytes=200)
    bounds = clocks[:len(raws)]
    got = decode_events(raws, bounds, limits)
    assert got == [decode_event(r, b, limits) for r, b in zip(raws, bounds)]
    for ev in got:
        assert type(ev) in (Event, Reject)


def test_a_plain_batch_takes_the_columnar_path_and_builds_real_events() -> None:
    raws = [orjson.dumps(_good(i, i % 4)) for i in range(40)]
    bounds: list[int | None] = [None] * 40
    fast = _decode_columns(raws, bounds, Limits())
    assert fast is not None and fast == [decode_event(r, None, Limits()) for r in raws]
    ev = fast[0]
    assert type(ev) is Event and isinstance(ev, Event)
    assert ev == Event("e0", "u0", "view", 1_700_000_000_000, "i0", position=0)
    assert hash(ev) == hash(Event("e0", "u0", "view", 1_700_000_000_000, "i0", position=0))
    assert [f.name for f in fields(ev)] == [f.name for f in fields(Event)]
    with pytest.raises(FrozenInstanceError):
        ev.ts = 1  # type: ignore[misc]
    assert fast[1].propensity == 0.5 and type(fast[3].propensity) is float
    # one bad message: the batch goes message by message, with the same results
    raws[7] = b'{"event_id": "x"}'
    assert _decode_columns(raws, bounds, Limits()) is None
    out = decode_events(raws, bounds, Limits())
    assert isinstance(out[7], Reject) and out[7].reason == "missing_field"
    assert out[:7] == fast[:7] and out[8:] == fast[8:]


_EDGES = {  # valid values at the edges of each field (and a few just past them)
    "event_id": ["a", "x" * 50, "é" * 50, "x" * 51, 7, ""],
    "user_id": ["b", "ü" * 50, "y" * 51, 0],
    "ts": [0, 1, 2**63 - 1, 2**63, 1.7e12, -1, True],
    "item_id": [None, "i", "z" * 50, "z" * 51, 3, ""],
    "query": [None, "", "q", "q" * 1024, "q" * 1025, 5],
    "arm": [None, "a", "a" * 50, "a" * 51, 1, ""],
    "position": [None, 0, 1, 2**64 - 1, -1, True, 1.0],
    "propensity": [None, 1, 1.0, 1e-300, 0, 0.0, 1.5, -0.5, True],
    "type": ["view", "search", "forget", "teleport"],
}


def test_the_columnar_path_on_edge_values_equals_the_per_event_decode() -> None:
    """Seeded batches of valid events with one edge value each: the columnar path is taken for
    many of them (not only the fallback) and always gives what decode_event gives."""
    rng = random.Random(5)
    limits = Limits(max_id_bytes=200)
    fast_batches = 0
    for _ in range(400):
        raws, bounds = [], []
        for _i in range(rng.randint(4, 12)):
            ev = _good(rng.randint(0, 50), rng.randint(0, 3))
            if rng.random() < 0.15:
                f = rng.choice(sorted(_EDGES))
                ev[f] = rng.choice(_EDGES[f])
                if ev[f] is None:
                    del ev[f]
            raws.append(orjson.dumps(ev))
            bounds.append(10**12 if rng.random() < 0.02  # ts_in_future
                          else rng.choice([None, 1_700_000_000_000, 2 * 10**12]))
        want = [decode_event(r, b, limits) for r, b in zip(raws, bounds)]
        fast = _decode_columns(raws, bounds, limits)
        if fast is not None:
            fast_batches += 1
            assert fast == want
        assert decode_events(raws, bounds, limits) == want
    assert fast_batches >= 40, fast_batches


def test_with_user_is_the_event_with_another_user() -> None:
    ev = decode_event(orjson.dumps(_good(3, 1)), None, Limits())
    assert isinstance(ev, Event)
    other = with_user(ev, "hashed")
    assert type(other) is Event and other == replace(ev, user_id="hashed") and ev.user_id == "u3"


# ---------------------------------------------------------------- apply checks
def test_check_applicable_names_the_first_offending_record() -> None:
    from stream.settings import Settings
    from stream.worker.batchsteps import check_applicable
    from stream.worker.classify import Accepted
    from stream.worker.state import PartitionState

    s = Settings.from_env({})
    st = PartitionState.empty(3, 4, s.profile_params(), s.bandit_params(), 10, "m")

    def acc(i: int, **kw: object) -> Accepted:
        return Accepted(st, replace(Event(f"e{i}", "u", "view", 1, "i1"), **kw), 100 + i, 0, b"")

    live = [acc(i) for i in range(5)]
    vectors = np.ones((5, 4), dtype=np.float32)
    check_applicable(live, vectors, set())
    vectors[1, 2] = np.nan
    vectors[3, 0] = np.inf
    check_applicable(live, vectors, {1, 3})  # parked rows have no vector yet
    with pytest.raises(ValueError, match=r"non-finite vector for partition 3 offset 103 \(1 in"):
        check_applicable(live, vectors, {1})
    with pytest.raises(ValueError, match=r"offset 101 \(2 in the batch\)"):
        check_applicable(live, vectors, set())
    vectors[:] = 1.0
    live[2] = acc(2, ts=2**63)
    with pytest.raises(ValueError, match=r"ts 9223372036854775808 does not fit int64 \("
                                         r"partition 3 offset 102\)"):
        check_applicable(live, vectors, set())
    live[2] = acc(2, position=-(2**63) - 1)
    with pytest.raises(ValueError, match="position -9223372036854775809 does not fit int64"):
        check_applicable(live, vectors, set())
    live[2] = acc(2, ts=-(2**63), position=2**63 - 1)  # the edges fit
    check_applicable(live, vectors, set())


def test_key_rows_refuses_keys_of_another_size() -> None:
    assert key_rows([pair_key("u", "e")]).shape == (1, 2)
    with pytest.raises(ValueError, match="16 bytes each"):
        key_rows([pair_key("u", "e"), b""])
