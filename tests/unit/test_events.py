"""Event/item schema: every reject reason, accepted shapes, round trip, never-raises."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.events import (
    EVENT_TYPES,
    REASONS,
    Event,
    Item,
    Limits,
    Reject,
    decode_event,
    decode_item,
    encode_event,
)

pytestmark = pytest.mark.unit

L = Limits()
NOW = 1_718_000_000_000  # a 2024 Kafka message timestamp, epoch ms
_DROP = object()  # sentinel: remove this field from the base event


def ev(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e1",
        "user_id": "u1",
        "type": "click",
        "ts": NOW,
        "item_id": "i1",
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not _DROP}


def dec(obj: Any, msg_ts: int | None = NOW, limits: Limits = L) -> Event | Reject:
    return decode_event(orjson.dumps(obj), msg_ts, limits)


# --- rejects ---------------------------------------------------------------------------------

BAD_EVENTS: list[tuple[str, bytes, Limits]] = [
    ("oversized", b'{"x":"' + b"a" * 70000 + b'"}', L),
    ("bad_json", b'{"event_id": "e1",', L),
    ("bad_json", b"\xff\xfe", L),
    ("not_object", b"[1, 2]", L),
    ("not_object", b'"hello"', L),
    ("missing_field", orjson.dumps(ev(event_id=_DROP)), L),
    ("missing_field", orjson.dumps(ev(user_id=None)), L),
    ("missing_field", orjson.dumps(ev(ts=_DROP)), L),
    ("missing_field", orjson.dumps(ev(type=_DROP)), L),
    ("missing_field", orjson.dumps(ev(item_id=_DROP)), L),
    ("missing_field", orjson.dumps(ev(type="search", item_id=_DROP)), L),
    ("missing_field", orjson.dumps(ev(type="search", query="")), L),
    ("unknown_type", orjson.dumps(ev(type="hover")), L),
    ("unknown_type", orjson.dumps(ev(type="VIEW")), L),
    ("bad_field", orjson.dumps(ev(type=3)), L),
    ("bad_field", orjson.dumps(ev(type=["view"])), L),
    ("bad_field", orjson.dumps(ev(event_id="")), L),
    ("bad_field", orjson.dumps(ev(user_id=1.5)), L),
    ("bad_field", orjson.dumps(ev(item_id=True)), L),
    ("bad_field", orjson.dumps(ev(ts="1718000000000")), L),
    ("bad_field", orjson.dumps(ev(ts=True)), L),
    ("bad_field", orjson.dumps(ev(ts=1.5e12 + 0.5)), L),
    ("bad_field", orjson.dumps(ev(arm=7)), L),
    ("bad_field", orjson.dumps(ev(position=-1)), L),
    ("bad_field", orjson.dumps(ev(position=1.0)), L),
    ("bad_field", orjson.dumps(ev(propensity=0)), L),
    ("bad_field", orjson.dumps(ev(propensity=1.01)), L),
    ("bad_field", orjson.dumps(ev(propensity="0.5")), L),
    ("bad_field", orjson.dumps(ev(query=["a"])), L),
    ("oversized", orjson.dumps(ev(type="search", query="q" * 1025)), L),
    ("oversized", orjson.dumps(ev(user_id="u" * 257)), L),
    ("oversized", orjson.dumps(ev(arm="a" * 257)), L),
    ("oversized", orjson.dumps(ev()), Limits(max_bytes=10)),
    ("ts_too_old", orjson.dumps(ev(ts=-1)), L),
    ("ts_too_old", orjson.dumps(ev(ts=999)), Limits(min_ts=1000)),
    ("ts_in_future", orjson.dumps(ev(ts=NOW + 86_400_001)), L),
]


@pytest.mark.parametrize(("reason", "raw", "limits"), BAD_EVENTS)
def test_bad_event_rejected(reason: str, raw: bytes, limits: Limits) -> None:
    out = decode_event(raw, NOW, limits)
    assert isinstance(out, Reject), out
    assert out.reason == reason, out
    assert out.reason in REASONS
    assert out.detail and "\n" not in out.detail


def test_every_reason_is_exercised() -> None:
    assert {r for r, _, _ in BAD_EVENTS} == set(REASONS)


def test_reject_detail_names_field_and_type() -> None:
    out = dec(ev(ts="soon"))
    assert out == Reject("bad_field", "field 'ts' must be an integer (epoch ms), got str")


# --- accepts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_valid_event_of_each_type(etype: str) -> None:
    obj = ev(type=etype, query="red shoes") if etype == "search" else ev(type=etype)
    out = dec(obj)
    assert isinstance(out, Event)
    assert out.type == etype and out.ts == NOW


def test_search_without_item_and_optional_fields() -> None:
    out = dec(ev(type="search", item_id=_DROP, query="q", arm="b", position=0, propensity=1))
    assert out == Event("e1", "u1", "search", NOW, None, "q", "b", 0, 1.0)
    assert isinstance(out.propensity, float)


def test_extra_fields_ignored() -> None:
    assert dec(ev(referrer="x", nested={"a": [1]})) == dec(ev())


def test_numeric_ids_coerced() -> None:
    out = dec(ev(event_id=17, user_id=196, item_id=242))
    assert isinstance(out, Event)
    assert (out.event_id, out.user_id, out.item_id) == ("17", "196", "242")


@pytest.mark.parametrize("ts", [874_965_758_000, 1_569_888_000_000])  # MovieLens 1997, 2019 logs
def test_historical_timestamps_accepted(ts: int) -> None:
    out = dec(ev(ts=ts))
    assert isinstance(out, Event) and out.ts == ts


def test_integral_float_ts_accepted_as_int() -> None:
    out = decode_event(
        b'{"event_id":"e","user_id":"u","type":"view","ts":1.7e12,"item_id":"i"}', None, L
    )
    assert isinstance(out, Event) and out.ts == 1_700_000_000_000 and type(out.ts) is int


def test_future_check_skipped_without_message_time() -> None:
    assert isinstance(dec(ev(ts=NOW * 10), msg_ts=None), Event)
    assert isinstance(dec(ev(ts=NOW + 86_400_000)), Event)  # exactly at the bound


def test_empty_query_on_non_search_is_none() -> None:
    out = dec(ev(query=""))
    assert isinstance(out, Event) and out.query is None


def test_encode_round_trip() -> None:
    e = Event("e1", "u1", "search", NOW, None, "q", "arm-a", 2, 0.5)
    raw = encode_event(e)
    assert b"null" not in raw and b"item_id" not in raw
    assert decode_event(raw, NOW, L) == e


ids = st.text(min_size=1, max_size=20)
valid_events = st.builds(
    Event,
    event_id=ids,
    user_id=ids,
    type=st.sampled_from(EVENT_TYPES),
    ts=st.integers(0, NOW),
    item_id=ids,
    query=st.one_of(st.none(), st.text(min_size=1, max_size=50)),
    arm=st.one_of(st.none(), ids),
    position=st.one_of(st.none(), st.integers(0, 1000)),
    propensity=st.one_of(st.none(), st.floats(min_value=1e-9, max_value=1.0)),
).filter(lambda e: e.type != "search" or e.query is not None)


@settings(derandomize=True, deadline=None)
@given(valid_events)
def test_encode_round_trip_property(e: Event) -> None:
    assert decode_event(encode_event(e), NOW, L) == e


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.binary(max_size=200))
def test_decode_event_never_raises_on_bytes(raw: bytes) -> None:
    assert isinstance(decode_event(raw, NOW, L), Event | Reject)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
field_names = st.sampled_from(
    ["event_id", "user_id", "type", "ts", "item_id", "query", "arm", "position", "propensity"]
)


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.dictionaries(field_names, json_values | st.sampled_from(EVENT_TYPES), max_size=9))
def test_decode_event_never_raises_on_json_objects(obj: dict[str, Any]) -> None:
    out = dec(obj)
    assert isinstance(out, Event | Reject)
    if isinstance(out, Reject):
        assert out.reason in REASONS


# --- items -----------------------------------------------------------------------------------


def test_valid_item_and_text() -> None:
    out = decode_item(
        b'{"item_id": 42, "title": "Toy Story", "category": "Animation", "price": 3}', L
    )
    assert out == Item("42", "Toy Story", "Animation", None, 3.0)
    assert out.text() == "Toy Story | Animation"
    assert Item("1", "T", "C", "B").text() == "T | C | B"
    assert Item("1", "T", brand="B").text() == "T | B"
    assert Item("1", "T").text() == "T"


def test_item_minimal_and_extra_fields() -> None:
    out = decode_item(b'{"item_id": "a", "title": "x", "category": "", "foo": 1}', L)
    assert out == Item("a", "x")


BAD_ITEMS: list[tuple[str, bytes, Limits]] = [
    ("oversized", b'{"item_id":"a","title":"' + b"t" * 70000 + b'"}', L),
    ("bad_json", b"{", L),
    ("not_object", b"3", L),
    ("missing_field", b'{"title": "x"}', L),
    ("missing_field", b'{"item_id": "a"}', L),
    ("bad_field", b'{"item_id": "", "title": "x"}', L),
    ("bad_field", b'{"item_id": 1.5, "title": "x"}', L),
    ("bad_field", b'{"item_id": "a", "title": ""}', L),
    ("bad_field", b'{"item_id": "a", "title": 5}', L),
    ("bad_field", b'{"item_id": "a", "title": "x", "category": 5}', L),
    ("bad_field", b'{"item_id": "a", "title": "x", "brand": ["b"]}', L),
    ("bad_field", b'{"item_id": "a", "title": "x", "price": -1}', L),
    ("bad_field", b'{"item_id": "a", "title": "x", "price": "9.99"}', L),
    ("bad_field", b'{"item_id": "a", "title": "x", "price": true}', L),
    ("oversized", orjson.dumps({"item_id": "a", "title": "t" * 1025}), L),
    ("oversized", orjson.dumps({"item_id": "i" * 257, "title": "t"}), L),
]


@pytest.mark.parametrize(("reason", "raw", "limits"), BAD_ITEMS)
def test_bad_item_rejected(reason: str, raw: bytes, limits: Limits) -> None:
    out = decode_item(raw, limits)
    assert isinstance(out, Reject), out
    assert out.reason == reason, out


@settings(derandomize=True, deadline=None, max_examples=200)
@given(st.binary(max_size=200))
def test_decode_item_never_raises(raw: bytes) -> None:
    assert isinstance(decode_item(raw, L), Item | Reject)
