"""Unit tests for the synthetic data generator."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.data.generate import CATEGORIES, EVENT_TYPES, Dataset, generate

pytestmark = pytest.mark.unit

_BY_NAME = {c.name: c for c in CATEGORIES}


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate(users=300, items=400, events=12_000, seed=42)


def _check_event(e: dict) -> None:
    """Tiny local schema check, mirroring the event contract."""
    assert isinstance(e["event_id"], str) and e["event_id"]
    assert isinstance(e["user_id"], str) and e["user_id"]
    assert e["type"] in EVENT_TYPES
    assert isinstance(e["ts"], int) and not isinstance(e["ts"], bool)
    if e["type"] == "search":
        assert isinstance(e["query"], str) and e["query"]
        assert "item_id" not in e
    else:
        assert isinstance(e["item_id"], str) and e["item_id"]
    if "position" in e:
        assert e["type"] in ("view", "click")
        assert 1 <= e["position"] <= 10
    assert "arm" not in e
    assert set(e) <= {"event_id", "user_id", "type", "ts", "item_id", "query", "arm",
                      "position", "propensity"}


def test_deterministic_same_seed(tmp_path: Path) -> None:
    a = generate(50, 60, 1000, seed=7).write(tmp_path / "a")
    b = generate(50, 60, 1000, seed=7).write(tmp_path / "b")
    for k in a:
        assert a[k].read_bytes() == b[k].read_bytes()


def test_different_seed_differs() -> None:
    a = generate(50, 60, 1000, seed=7)
    b = generate(50, 60, 1000, seed=8)
    assert a.events != b.events and a.items != b.items


def test_counts(ds: Dataset) -> None:
    assert len(ds.items) == 400
    assert len(ds.events) == 12_000
    assert len(ds.interests) == 300
    assert len({e["event_id"] for e in ds.events}) == 12_000
    assert len({i["item_id"] for i in ds.items}) == 400
    assert ds.items[41]["item_id"] == "i00042"
    assert min(ds.interests) == "u00001"


def test_events_valid(ds: Dataset) -> None:
    item_ids = {i["item_id"] for i in ds.items}
    for e in ds.events:
        _check_event(e)
        assert e["user_id"] in ds.interests
        if "item_id" in e:
            assert e["item_id"] in item_ids


def test_type_mix(ds: Dataset) -> None:
    share = {t: c / len(ds.events) for t, c in Counter(e["type"] for e in ds.events).items()}
    for t, p in zip(EVENT_TYPES, (0.60, 0.22, 0.08, 0.04, 0.06)):
        assert abs(share[t] - p) < 0.03, (t, share[t])


def test_ts_strictly_increasing(ds: Dataset) -> None:
    ts = [e["ts"] for e in ds.events]
    assert ts[0] == 1_700_000_000_000
    assert all(b > a for a, b in itertools.pairwise(ts))


def test_users_min_events_and_interests(ds: Dataset) -> None:
    per_user = Counter(e["user_id"] for e in ds.events)
    assert set(per_user) == set(ds.interests)
    assert min(per_user.values()) >= 3
    for cats in ds.interests.values():
        assert 1 <= len(cats) <= 3 and len(set(cats)) == len(cats)
        assert all(c in _BY_NAME for c in cats)


def test_interest_share(ds: Dataset) -> None:
    cat = {i["item_id"]: i["category"] for i in ds.items}
    item_events = [e for e in ds.events if "item_id" in e]
    hits = sum(cat[e["item_id"]] in ds.interests[e["user_id"]] for e in item_events)
    assert hits / len(item_events) >= 0.80
    # Searches are about one of the user's interests.
    for e in ds.events:
        if e["type"] == "search":
            assert any(e["query"] in _BY_NAME[c].queries for c in ds.interests[e["user_id"]])


def test_titles(ds: Dataset) -> None:
    for it in ds.items:
        c = _BY_NAME[it["category"]]
        assert it["brand"] in c.brands
        assert it["title"].startswith(it["brand"] + " ")
        assert any(n in it["title"] for n in c.nouns)
        assert isinstance(it["price"], float) and it["price"] > 0


def test_categories_distinct() -> None:
    assert 15 <= len(CATEGORIES) <= 25
    assert len({c.name for c in CATEGORIES}) == len(CATEGORIES)


def test_write(tmp_path: Path, ds: Dataset) -> None:
    paths = ds.write(tmp_path / "out")
    assert {p.name for p in paths.values()} == {"items.jsonl", "events.jsonl", "interests.json"}
    lines = paths["events"].read_bytes().splitlines()
    assert [orjson.loads(x) for x in lines] == ds.events
    assert len(paths["items"].read_bytes().splitlines()) == len(ds.items)
    assert orjson.loads(paths["interests"].read_bytes()) == ds.interests


def test_tiny_and_zero_events() -> None:
    d = generate(1, 1, 3, seed=0)
    assert len(d.events) == 3 and all(e["user_id"] == "u00001" for e in d.events)
    assert generate(5, 3, 0, seed=0).events == []


@pytest.mark.parametrize("kw", [{"users": 0}, {"items": 0}, {"events": -1}, {"events": 5}])
def test_invalid_args(kw: dict) -> None:
    args = {"users": 10, "items": 10, "events": 100, "seed": 1} | kw
    with pytest.raises(ValueError):
        generate(**args)
