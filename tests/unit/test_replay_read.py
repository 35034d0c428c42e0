"""Unit tests for replay input parsing and argument validation (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream.data import logs
from stream.kafka import clients
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools import replay as rp

pytestmark = pytest.mark.unit

KAFKA = Settings.from_env({}, bootstrap_servers="127.0.0.1:1")


def test_read_jsonl_with_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "ev.jsonl"
    p.write_bytes(b'{"event_id":"e1","user_id":"u1","type":"view","ts":1,"item_id":"i1"}\n'
                  b"\n"
                  b"{not json\n"
                  b"[1,2]\n"
                  b'{"event_id":"e2","user_id":"u2","type":"search","ts":2,"query":"tent"}\r\n')
    out = list(logs.read_events(p))
    assert out == [
        {"event_id": "e1", "user_id": "u1", "type": "view", "ts": 1, "item_id": "i1"},
        b"{not json",
        b"[1,2]",
        {"event_id": "e2", "user_id": "u2", "type": "search", "ts": 2, "query": "tent"},
    ]


def test_records_keep_original_bytes(tmp_path: Path) -> None:
    line = b'{"user_id": "u1",  "ts": 5, "type":"view", "item_id":"i9", "event_id":"x"}'
    p = tmp_path / "ev.jsonl"
    p.write_bytes(line + b"\n\n")
    skipped = [0]
    recs = list(logs.iter_records(p, skipped))
    assert [r.value for r in recs] == [line]
    assert skipped == [1]
    assert rp._key(recs[0].obj, "user_id") == b"u1"
    assert rp._key(None, "user_id") is None


def test_read_csv(tmp_path: Path) -> None:
    p = tmp_path / "ev.csv"
    p.write_text("event_id,user_id,type,ts,item_id,query,position,propensity\n"
                 "e1,u1,view,1700000000000,i1,,3,0.25\n"
                 "e2,u1,search,1700000000005,,trail shoes,,\n"
                 ",,,,,,,\n"
                 "e3,u2,click,oops,i2,,1,\n", encoding="utf-8")
    out = list(logs.read_events(p))
    assert out[0] == {"event_id": "e1", "user_id": "u1", "type": "view", "ts": 1700000000000,
                      "item_id": "i1", "position": 3, "propensity": 0.25}
    assert out[1] == {"event_id": "e2", "user_id": "u1", "type": "search",
                      "ts": 1700000000005, "query": "trail shoes"}
    # Unparseable numbers stay strings: the worker, not the replay, rejects them.
    assert out[2]["ts"] == "oops" and out[2]["position"] == 1
    assert len(out) == 3
    recs = list(logs.iter_records(p, [0]))
    assert orjson.loads(recs[0].value) == out[0]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(logs.read_events(missing))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        rp.replay(missing, KAFKA, progress=False)


@pytest.mark.parametrize("kw", [
    {"speed": 2.0, "rate": 100.0},
    {"speed": 0},
    {"speed": -1.0},
    {"rate": 0},
    {"limit": -1},
])
def test_replay_arg_validation(tmp_path: Path, kw: dict, monkeypatch) -> None:
    p = tmp_path / "ev.jsonl"
    p.write_bytes(b'{"user_id":"u1"}\n')

    def boom(*a, **k):  # validation must happen before any broker contact
        raise AssertionError("producer created")

    monkeypatch.setattr(clients, "_client_class", boom)
    with pytest.raises(ValueError):
        rp.replay(p, KAFKA, progress=False, **kw)


def test_create_topics_validation() -> None:
    with pytest.raises(ValueError):
        create_topics(KAFKA, {"events": 0})
    with pytest.raises(ValueError):
        create_topics(KAFKA, {"events": 1}, replication=0)


class _FakeFuture:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def add_callback(self, fn):
        if self.ok:
            fn(None)
        return self

    def add_errback(self, fn):
        if not self.ok:
            fn(TimeoutError("x"))
        return self


class _FakeProducer:
    """Stands for kafka-python's KafkaProducer class (built by the Kafka layer)."""

    def __init__(self, **config) -> None:
        self.config = config
        self.sent: list[tuple] = []

    def send(self, topic, key=None, value=None, headers=None, partition=None):
        self.sent.append((topic, key, value))
        return _FakeFuture(ok=b"bad" not in value)

    def flush(self):
        pass

    def close(self, timeout=None):
        pass


def test_replay_with_fake_producer(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "ev.jsonl"
    p.write_bytes(b'{"user_id":"u1","ts":1}\n\n{"user_id":"u2","ts":2,"x":"bad"}\nnot json\n'
                  b'{"user_id":"u3","ts":3}\n')
    fake = _FakeProducer()
    monkeypatch.setattr(clients, "_client_class", lambda kind: lambda **cfg: fake)
    s = rp.replay(p, KAFKA, progress=False, limit=3)
    assert (s.sent, s.failed, s.skipped) == (2, 1, 1)
    assert s.errors == {"TimeoutError": 1}
    assert fake.sent[0] == ("events", b"u1", b'{"user_id":"u1","ts":1}')
    assert fake.sent[2] == ("events", None, b"not json")
    assert len(fake.sent) == 3


def test_rate_pacing(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "ev.jsonl"
    p.write_bytes(b"".join(b'{"user_id":"u%d","ts":%d}\n' % (i, i) for i in range(21)))
    monkeypatch.setattr(clients, "_client_class", lambda kind: _FakeProducer)
    s = rp.replay(p, KAFKA, progress=False, rate=200.0)
    assert s.sent == 21
    assert 0.09 <= s.seconds < 0.5  # 20 intervals at 200/s = 0.1 s


def test_speed_pacing(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "ev.jsonl"
    p.write_bytes(b'{"user_id":"u1","ts":1000}\n{"user_id":"u1","ts":1500}\n'
                  b'{"user_id":"u1","ts":2000}\n')
    monkeypatch.setattr(clients, "_client_class", lambda kind: _FakeProducer)
    s = rp.replay(p, KAFKA, progress=False, speed=10.0)
    assert 0.09 <= s.seconds < 0.5  # 1 s of event time at 10x


def test_load_items_keys(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "items.csv"
    p.write_text("item_id,title,category,brand,price\ni1,Tent,camping tents,Fern,99.99\n")
    fake = _FakeProducer()
    monkeypatch.setattr(clients, "_client_class", lambda kind: lambda **cfg: fake)
    s = rp.load_items(p, KAFKA, progress=False)
    assert s.sent == 1
    topic, key, value = fake.sent[0]
    assert (topic, key) == ("items", b"i1")
    assert orjson.loads(value)["price"] == 99.99
