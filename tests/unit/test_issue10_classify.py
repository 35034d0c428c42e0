"""Issue 10, the classify phase's pure pieces: the dedupe window keyed by (user, event_id) with a
fixed memory per entry, the rate cap that a late event cannot bypass, ids bounded in bytes."""

from __future__ import annotations

import pickle

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.dedupe import DedupeWindow
from stream.core.errors import ConfigError
from stream.core.events import Event, Limits, Reject, decode_event, decode_item
from stream.core.ratelimit import RateCap
from stream.settings import Settings

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------ dedupe (points 4 and 15)

def test_the_window_is_keyed_by_user_and_event_id() -> None:
    w = DedupeWindow(10)
    w.add("carol", "e2")
    assert w.seen("carol", "e2") and not w.seen("bob", "e2") and not w.seen("carol", "e3")
    # length-prefixed: no two pairs share a key by concatenation
    w.add("a\0b", "c")
    assert not w.seen("a", "b\0c") and not w.seen("a\0", "bc")


def test_the_memory_per_entry_does_not_grow_with_the_ids() -> None:
    short, long = DedupeWindow(100), DedupeWindow(100)
    for i in range(100):
        short.add("u", f"e{i}")
        long.add("u" * 256, f"{i}" + "e" * 255)
    assert len(pickle.dumps(short.state())) == len(pickle.dumps(long.state()))
    assert len(short.state()["keys"]) == 16 * 100


def test_a_discarded_then_re_added_id_stays_a_whole_window() -> None:
    """Point 15: the old entry of a discarded id must not evict its re-added entry."""
    w = DedupeWindow(3)
    w.add("u", "x")
    w.discard("u", "x")
    assert not w.seen("u", "x")
    w.add("u", "x")
    w.add("u", "y")
    w.add("u", "z")  # the old entry of x leaves; x, y, z are the last three adds
    assert w.seen("u", "x") and w.seen("u", "y") and w.seen("u", "z") and len(w) == 3
    w.add("u", "a")
    assert not w.seen("u", "x") and w.seen("u", "a")


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["add", "add", "discard", "reload"]),
                          st.sampled_from(["u1", "u2"]), st.sampled_from(["a", "b", "c", "d"])),
                max_size=60),
       st.integers(1, 5))
def test_the_window_equals_the_last_adds_minus_discards(ops, capacity) -> None:
    """An id is in the window iff one of the last ``capacity`` adds was it and it was not
    discarded since; a snapshot round trip changes nothing."""
    w = DedupeWindow(capacity)
    log: list[tuple[str, str]] = []  # every add, in order
    discarded: dict[tuple[str, str], int] = {}  # pair -> len(log) when last discarded
    for op, user, eid in ops:
        if op == "add":
            w.add(user, eid)
            log.append((user, eid))
        elif op == "discard":
            w.discard(user, eid)
            discarded[(user, eid)] = len(log)
        else:
            w = DedupeWindow.from_state(pickle.loads(pickle.dumps(w.state())), capacity)
        start = max(0, len(log) - capacity)
        for pair in {(u, e) for u in ("u1", "u2") for e in "abcd"}:
            recent = [i for i in range(start, len(log)) if log[i] == pair]
            want = bool(recent) and recent[-1] >= discarded.get(pair, -1)
            assert w.seen(*pair) == want, (pair, ops)
        assert len(w) == min(len(log), capacity)


def test_an_old_snapshot_list_of_event_ids_is_kept_for_every_user() -> None:
    """A snapshot written before the pair keys holds bare event ids (no user): each of them
    stays a duplicate for any user until it leaves the window (what the old code did), and a
    discard of any user's pair forgets it (a dead-lettered event may come back)."""
    w = DedupeWindow.from_state(["e1", "e2", "e3"], 4)
    assert w.seen("anyone", "e1") and w.seen("bob", "e3") and not w.seen("bob", "e4")
    w.discard("bob", "e2")
    assert not w.seen("carol", "e2")
    w.add("bob", "e4")
    w.add("bob", "e5")  # window 4: e1 and the discarded e2 leave
    assert not w.seen("x", "e1") and w.seen("y", "e3") and w.seen("bob", "e4")
    again = DedupeWindow.from_state(pickle.loads(pickle.dumps(w.state())), 4)
    assert again.seen("y", "e3") and not again.seen("x", "e1") and again.seen("bob", "e5")
    assert DedupeWindow.from_state(["e1", "e2", "e3"], 2).seen("u", "e3")
    assert not DedupeWindow.from_state(["e1", "e2", "e3"], 2).seen("u", "e1")


# ------------------------------------------------------------------ rate cap (points 5 and 15)

def test_an_event_of_an_older_window_cannot_bypass_the_cap() -> None:
    """Point 15: a late event is charged to the user's newest window, never let through free."""
    cap = RateCap(3, 60_000)
    allowed, updates = cap.check(["bot"] * 6, [60_000, 1, 2, 3, 4, 5])
    assert allowed == [True, True, True, False, False, False]
    cap.commit(updates)
    assert cap.check(["bot"], [10])[0] == [False]  # a later batch too
    assert cap.check(["bot"], [120_000])[0] == [True]  # the next window opens


def test_a_refund_gives_back_one_event_of_the_window_it_was_charged_to() -> None:
    cap = RateCap(1, 1000)
    allowed, charged, updates = cap.decide(["u", "u"], [5, 6])
    assert allowed == [True, False] and charged == [0, None]
    cap.commit(updates)
    cap.refund("u", 0)
    assert cap.check(["u"], [7])[0] == [True]
    cap.commit(cap.check(["u"], [1500])[1])  # window 1
    cap.refund("u", 0)  # a closed window: nothing to give back
    assert cap.state() == {"u": (1, 1)}


# ------------------------------------------------------------------ ids in bytes (point 11)

def _ev(**kw: object) -> bytes:
    base: dict[str, object] = {"event_id": "e1", "user_id": "u1", "type": "view",
                               "ts": 1_700_000_000_000, "item_id": "i1"}
    return orjson.dumps({**base, **kw})


@pytest.mark.parametrize("field", ["user_id", "event_id", "item_id", "arm"])
def test_ids_are_bounded_in_bytes_not_characters(field: str) -> None:
    """100 emoji are 100 characters but 400 UTF-8 bytes: over the default 256."""
    out = decode_event(_ev(**{field: "\U0001F600" * 100}), None, Limits())
    assert isinstance(out, Reject) and out.reason == "oversized", out
    assert f"'{field}'" in out.detail and "400 bytes" in out.detail and "256" in out.detail
    ok = decode_event(_ev(**{field: "\U0001F600" * 64}), None, Limits())  # 256 bytes
    assert isinstance(ok, Event)


def test_the_id_bound_is_a_setting() -> None:
    limits = Settings.from_env({"PROFILES_MAX_ID_BYTES": "8"}).limits()
    assert limits.max_id_bytes == 8
    assert isinstance(decode_event(_ev(user_id="12345678"), None, limits), Event)
    out = decode_event(_ev(user_id="123456789"), None, limits)
    assert isinstance(out, Reject) and out.reason == "oversized"
    item = decode_item(orjson.dumps({"item_id": "i" * 9, "title": "t"}), limits)
    assert isinstance(item, Reject) and item.reason == "oversized"
    assert Settings().max_id_bytes == 256
    for name in ("max_id_bytes", "parked_max_bytes"):
        with pytest.raises(ConfigError, match=f"{name} must be >= 1"):
            Settings(**{name: 0})
