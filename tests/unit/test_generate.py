"""Unit tests for the synthetic data generator."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
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


# --- repeat-purchase mode -------------------------------------------------------------------

def _digest(rows: list[dict]) -> str:
    import hashlib

    return hashlib.sha256(b"".join(orjson.dumps(r) + b"\n" for r in rows)).hexdigest()


def test_mode_off_is_unchanged() -> None:
    """Pinned output of the generator before the repeat mode existed (same bytes)."""
    d = generate(50, 60, 1000, seed=7)
    assert _digest(d.events) == "badf536b6105a0e09a86c06348334a55fe77acc6c8a9f8f65a3629e047003992"
    assert _digest(d.items) == "f0c87aff4855642bc5875499d1faf47061a8a3a9d902c455bfa6a5038e2c3315"
    assert generate(50, 60, 1000, seed=7, repeat_frac=0.0, staples=5, staple_days=9.0) == d
    assert d.staples == {}


@pytest.fixture(scope="module")
def rep() -> Dataset:
    return generate(users=200, items=400, events=20_000, seed=1, repeat_frac=0.3, staples=3,
                    staple_days=4.0)


def _staple_purchases(d: Dataset) -> list[dict]:
    st = d.staples["users"]
    return [e for e in d.events if e["type"] == "purchase" and e["item_id"] in st[e["user_id"]]]


def test_repeat_mode_valid_log(rep: Dataset) -> None:
    assert len(rep.events) == 20_000
    assert [e["event_id"] for e in rep.events] == [f"e{n:08d}" for n in range(1, 20_001)]
    ts = [e["ts"] for e in rep.events]
    assert ts[0] == 1_700_000_000_000 and all(b > a for a, b in itertools.pairwise(ts))
    item_ids = {i["item_id"] for i in rep.items}
    for e in rep.events:
        _check_event(e)
        assert e["user_id"] in rep.interests and e.get("item_id", "i00001") in item_ids
    assert min(Counter(e["user_id"] for e in rep.events).values()) >= 3
    # Catalogue and interests are those of the same seed without the mode.
    off = generate(200, 400, 1000, seed=1)
    assert rep.items == off.items and rep.interests == off.interests
    st = rep.staples["users"]
    assert set(st) == set(rep.interests)
    assert all(len(v) == 3 == len(set(v)) for v in st.values())
    assert set(rep.staples["period_ms"]) == {i for v in st.values() for i in v}


def test_repeat_purchases_occur_at_the_configured_rate(rep: Dataset) -> None:
    sp = _staple_purchases(rep)
    # 30 % of the events are staple purchases (browsing adds a few: 4 % of it are purchases).
    assert 6_000 <= len(sp) <= 6_300
    # Gaps between two purchases of a staple follow the item's period (gamma, mean 1 x period;
    # a browsing purchase in between shortens a few).
    per, last, ratios = rep.staples["period_ms"], {}, []
    for e in sp:
        key = (e["user_id"], e["item_id"])
        if key in last:
            ratios.append((e["ts"] - last[key]) / per[e["item_id"]])
        last[key] = e["ts"]
    assert len(ratios) >= 5_000
    assert 0.85 < float(np.median(ratios)) < 1.05 and 0.9 < float(np.mean(ratios)) < 1.05
    # Periods scatter around staple_days; the log spans ~ purchases per staple x period.
    days = np.array(list(per.values())) / 86_400_000
    assert 3.0 < float(np.exp(np.log(days).mean())) < 5.3
    span = (rep.events[-1]["ts"] - rep.events[0]["ts"]) / 86_400_000
    assert 30 < span < 50  # 6,000 / (200 x 3) = 10 purchases x ~4 days
    # Most purchases are repeats of the user's own earlier purchase (what "buy again" serves).
    seen, repeats, purchases = set(), 0, 0
    for e in rep.events:
        if e["type"] == "purchase":
            key = (e["user_id"], e["item_id"])
            repeats += key in seen
            purchases += 1
            seen.add(key)
    assert repeats / purchases > 0.75
    # Browsing still follows the interests.
    cat = {i["item_id"]: i["category"] for i in rep.items}
    item_events = [e for e in rep.events if "item_id" in e]
    assert sum(cat[e["item_id"]] in rep.interests[e["user_id"]] for e in item_events) \
        / len(item_events) >= 0.80


def test_repeat_mode_deterministic(tmp_path: Path, rep: Dataset) -> None:
    kw = {"users": 40, "items": 80, "events": 3000, "repeat_frac": 0.2, "staples": 2,
          "staple_days": 3.0}
    a = generate(seed=5, **kw).write(tmp_path / "a")
    b = generate(seed=5, **kw).write(tmp_path / "b")
    assert set(a) == {"items", "events", "interests", "staples"}
    for k in a:
        assert a[k].read_bytes() == b[k].read_bytes()
    assert orjson.loads(a["staples"].read_bytes()) == generate(seed=5, **kw).staples
    c = generate(seed=6, **kw)
    assert c.events != generate(seed=5, **kw).events and c.staples != rep.staples


@pytest.mark.parametrize("kw, match", [
    ({"repeat_frac": 1.0}, "repeat_frac"),
    ({"repeat_frac": -0.1}, "repeat_frac"),
    ({"repeat_frac": 0.3, "staples": 0}, "staples"),
    ({"repeat_frac": 0.3, "staple_days": 0.0}, "staple_days"),
    ({"repeat_frac": 0.05}, "fewer than 2 per staple"),  # 500 < 2 x 100 x 3
    ({"repeat_frac": 0.98}, "browsing events left"),  # 200 < 3 x 100
])
def test_repeat_mode_invalid_args(kw: dict, match: str) -> None:
    args = {"users": 100, "items": 50, "events": 10_000, "seed": 1} | kw
    with pytest.raises(ValueError, match=match):
        generate(**args)


def test_cli_repeat_mode(tmp_path: Path, capsys) -> None:
    from stream.cli import main

    out = tmp_path / "g"
    assert main(["generate", "--users", "30", "--items", "60", "--events", "2000", "--seed", "3",
                 "--out", str(out), "--repeat-frac", "0.25", "--staples", "2",
                 "--staple-days", "2.5"]) == 0
    assert "repeat-purchase mode: 500 staple purchases over" in capsys.readouterr().out
    want = generate(30, 60, 2000, seed=3, repeat_frac=0.25, staples=2, staple_days=2.5)
    assert (out / "events.jsonl").read_bytes() == b"".join(orjson.dumps(r) + b"\n" for r in want.events)
    assert orjson.loads((out / "staples.json").read_bytes()) == want.staples
    with pytest.raises(SystemExit) as ex:
        main(["generate", "--out", str(out), "--repeat-frac", "1.5"])
    assert ex.value.code == 2
    with pytest.raises(SystemExit) as ex:  # too few staple purchases: one line, exit 1
        main(["generate", "--out", str(out), "--repeat-frac", "0.01"])
    assert ex.value.code == 1 and "fewer than 2 per staple" in capsys.readouterr().err
