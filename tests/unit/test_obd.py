"""OBD conversion: every row an impression, a click where click = 1, valid events and items."""

from __future__ import annotations

import orjson
import pandas as pd
import pytest

from stream.cli import main
from stream.core.events import Event, Item, Limits, decode_event, decode_item
from stream.data.obd import convert_rows, pseudo_user, read_rows, ts_ms
from tests.conftest import read_jsonl
from tests.obd_data import cache_dir, obd_frame

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("obd")
    assert main(["data", "obd", "--out", str(out), "--cache", str(cache_dir())]) == 0
    return out


def test_events_match_the_csv(converted):
    df = obd_frame()
    events = read_jsonl(converted / "events.jsonl")
    views = [e for e in events if e["type"] == "view"]
    clicks = [e for e in events if e["type"] == "click"]
    assert len(views) == len(df) == 10_000 and len(clicks) == int(df["click"].sum()) == 38
    assert len({e["event_id"] for e in events}) == len(events)
    ev = pd.DataFrame(views)
    assert (ev["item_id"].astype(int).to_numpy() == df["item_id"].to_numpy()).all()
    assert (ev["position"].to_numpy() == df["position"].to_numpy()).all()
    assert (ev["propensity"].to_numpy() == df["propensity_score"].to_numpy()).all()
    want_ts = (pd.to_datetime(df["timestamp"]).astype("int64") // 1_000_000).to_numpy()
    assert (ev["ts"].to_numpy() == want_ts).all()
    by_id = {e["event_id"]: e for e in views}
    for c in clicks:
        v = by_id[c["impression_id"]]
        assert (c["user_id"], c["item_id"], c["ts"]) == (v["user_id"], v["item_id"], v["ts"])
    clicked = df.index[df["click"] == 1]
    assert sorted(c["impression_id"] for c in clicks) == sorted(f"obd-random-all-{i}" for i in clicked)
    users = df[[f"user_feature_{j}" for j in range(4)]].astype(str).agg("|".join, axis=1)
    assert ev["user_id"].nunique() == users.nunique()
    # every converted event and item passes the worker's own validation
    limits = Limits()
    for e in events:
        assert isinstance(decode_event(orjson.dumps(e), None, limits), Event), e
    items = read_jsonl(converted / "items.jsonl")
    assert len(items) == 80 and {i["item_id"] for i in items} == {str(i) for i in range(80)}
    for it in items:
        assert isinstance(decode_item(orjson.dumps(it), limits), Item)


def test_convert_obd_alias_writes_the_same_events(converted, tmp_path):
    out = tmp_path / "ev.jsonl"
    csv = converted / "obd-random-all.csv"
    items = converted / "obd-random-all-item_context.csv"
    assert main(["bandit", "convert-obd", str(csv), "--out", str(out), "--items", str(items),
                 "--items-out", str(tmp_path / "it.jsonl")]) == 0
    # same rows, same content; only the event-id prefix follows the file name
    a = read_jsonl(out)
    b = read_jsonl(converted / "events.jsonl")
    strip = [{k: v for k, v in e.items() if k not in ("event_id", "impression_id")} for e in a]
    assert strip == [{k: v for k, v in e.items() if k not in ("event_id", "impression_id")}
                     for e in b]
    assert read_jsonl(tmp_path / "it.jsonl") == read_jsonl(converted / "items.jsonl")


def test_tools_create_their_output_folders(converted, tmp_path, capsys):
    """`--out NEW_DIR/events.jsonl` makes NEW_DIR (it was a bare `[Errno 2]` line)."""
    csv = converted / "obd-random-all.csv"
    out = tmp_path / "new" / "dir" / "events.jsonl"
    items_out = tmp_path / "other" / "items.jsonl"
    items = converted / "obd-random-all-item_context.csv"
    assert main(["bandit", "convert-obd", str(csv), "--out", str(out), "--items", str(items),
                 "--items-out", str(items_out)]) == 0
    assert len(read_jsonl(out)) == 10_038 and len(read_jsonl(items_out)) == 80
    assert "Errno" not in capsys.readouterr().err


def test_helpers():
    assert ts_ms("1970-01-01 00:00:01.999999+00:00") == 1999
    assert ts_ms("2019-11-24 09:00:00+09:00") == ts_ms("2019-11-24 00:00:00+00:00")
    with pytest.raises(ValueError, match="time zone"):
        ts_ms("2019-11-24 00:00:00")
    assert pseudo_user(["a", "b"]) == pseudo_user(["a", "b"]) != pseudo_user(["ab", ""])
    rows = list(read_rows(",timestamp,item_id,position,click,propensity_score,user_feature_0,"
                          "user_feature_1,user_feature_2,user_feature_3\n"
                          "7,2019-11-24 00:00:00+00:00,3,1,1,0.5,a,b,c,d\n"))
    out = list(convert_rows(rows, "x"))
    assert [e["type"] for e in out] == ["view", "click"] and out[0]["event_id"] == "x-7"


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bandit", "convert-obd", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")])
    assert info.value.code == 2 and "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["bandit", "ope", "--log", str(tmp_path / "nope.jsonl"), "--policy", "thompson"])
    assert info.value.code == 2
