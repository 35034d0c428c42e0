"""MovieLens-100k conversion on a small synthetic archive in the recbole format."""

from __future__ import annotations

import json
import zipfile

import pytest

from stream.core.errors import DataError
from stream.data.movielens import PREFIX, RATING_TO_TYPE, convert, movielens

pytestmark = pytest.mark.unit

ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tGoldenEye\t1995\tAction Adventure Thriller\n"
        "3\tCafé Society\t\tDrama\n")
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "196\t2\t3\t881250949\n"
         "186\t1\t5\t881250000\n"
         "196\t1\t1\t881250949\n"
         "22\t3\t4\t878887116\n"
         "22\t2\t2\t878887117\n")


def test_convert_items_and_events() -> None:
    items, events = convert(ITEM, INTER)
    assert items[0] == {"item_id": "1", "title": "Toy Story (1995)",
                        "category": "Animation, Children's, Comedy"}
    assert items[2] == {"item_id": "3", "title": "Café Society", "category": "Drama"}
    assert len(events) == 5
    # Sorted by (ts, user, item); ts in epoch ms.
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert events[0] == {"event_id": "ml-22-3", "user_id": "22", "type": "add_to_cart",
                         "ts": 878887116000, "item_id": "3", "rating": 4}
    assert [e["event_id"] for e in events[-2:]] == ["ml-196-1", "ml-196-2"]
    by_id = {e["event_id"]: e for e in events}
    assert by_id["ml-186-1"]["type"] == "purchase"
    assert by_id["ml-196-2"]["type"] == "click"
    assert by_id["ml-196-1"]["type"] == by_id["ml-22-2"]["type"] == "view"
    assert len(by_id) == 5
    assert set(RATING_TO_TYPE) == {1, 2, 3, 4, 5}


def test_events_pass_our_validation() -> None:
    from stream.core.events import Limits, Reject, decode_event

    _, events = convert(ITEM, INTER)
    for e in events:
        out = decode_event(json.dumps(e).encode(), 1_700_000_000_000, Limits())
        assert not isinstance(out, Reject), out


def test_bad_input_is_one_line_error() -> None:
    with pytest.raises(DataError, match="missing columns"):
        convert("item_id:token\tfoo\n1\tx\n", INTER)
    with pytest.raises(DataError, match="not in ml-100k.item"):
        convert(ITEM, INTER + "5\t99\t3\t881250949\n")
    with pytest.raises(DataError, match="outside 1..5"):
        convert(ITEM, INTER + "5\t1\t7\t881250949\n")


def test_movielens_reads_the_cached_wheel(tmp_path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "recbole-1.2.1-py3-none-any.whl", "w") as z:
        z.writestr(PREFIX + "ml-100k.item", ITEM.encode("latin-1"))  # the real file is latin-1
        z.writestr(PREFIX + "ml-100k.inter", INTER)
    paths = movielens(tmp_path / "out", cache)
    items = [json.loads(x) for x in paths["items"].read_text().splitlines()]
    events = [json.loads(x) for x in paths["events"].read_text().splitlines()]
    assert items[2]["title"] == "Café Society" and len(events) == 5


def test_cli_data_movielens(tmp_path, capsys) -> None:
    from stream.cli import main

    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "recbole-1.2.1-py3-none-any.whl", "w") as z:
        z.writestr(PREFIX + "ml-100k.item", ITEM)
        z.writestr(PREFIX + "ml-100k.inter", INTER)
    assert main(["data", "movielens", "--out", str(tmp_path / "o"), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "events:" in out and "5=purchase" in out
    assert (tmp_path / "o" / "events.jsonl").is_file()
