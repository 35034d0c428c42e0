"""Issue 10, points 6 and 11 (pure parts): the authenticated ``profiles-id-hashed`` header, the
dead-letter value that never hashes an id twice, what ``profiles dlq replay`` re-publishes, and
the pseudonymiser's cache bounded in bytes."""

from __future__ import annotations

import sys

import orjson
import pytest

from stream.core.errors import ConfigError
from stream.settings import Settings
from stream.tools.dlq import republication
from stream.worker.privacy import HASHED_HEADER, Pseudonymizer
from stream.worker.records import Record

pytestmark = pytest.mark.unit


def test_the_header_tag_binds_secret_partition_and_bytes() -> None:
    p = Pseudonymizer("k")
    value = orjson.dumps({"user_id": p("alice"), "type": "view"})
    tag = p.tag(2, value)
    assert p.verify(2, value, tag)
    assert not p.verify(3, value, tag)  # another partition: the user lives in one only
    assert not p.verify(2, value + b" ", tag)  # altered bytes
    assert not p.verify(2, value, b"1")  # the old "1"
    assert not Pseudonymizer("other").verify(2, value, tag)  # another secret
    # the tag is not a pseudonym of anything the API hashes (its key is derived, not the secret)
    assert len(tag) == 64 and tag[:32].decode() != p(f"2:{value.decode()}")
    assert not Pseudonymizer("").verify(2, value, tag)


def test_scrub_puts_the_pseudonym_it_is_given_never_hashes_twice() -> None:
    p = Pseudonymizer("k")
    h = p("alice")
    once = p.scrub(orjson.dumps({"user_id": "alice", "type": "view"}), h)
    assert once is not None and orjson.loads(once)["user_id"] == h
    # scrubbing a value that already holds the pseudonym leaves it as it is
    again = p.scrub(once, h)
    assert again is not None and orjson.loads(again)["user_id"] == h
    # no user known: the id is removed
    anon = p.scrub(orjson.dumps({"user_id": "mallory", "type": "view"}), None)
    assert anon is not None and b"mallory" not in anon and "user_id" not in orjson.loads(anon)
    assert p.scrub(b"not json", h) is None


def test_dlq_replay_forwards_the_tag_and_the_source_partition() -> None:
    p = Pseudonymizer("k")
    value = orjson.dumps({"user_id": p("alice"), "type": "view", "item_id": "i1"})
    tag = p.tag(3, value)
    dead = Record(0, 7, 0, b"x/3/9", value, (("reason", b"unknown_item"),
                                              ("source_partition", b"3"), (HASHED_HEADER, tag)))
    out = republication(dead)
    assert out.value == value and out.partition == 3 and out.key is None
    assert out.headers == [(HASHED_HEADER, tag)]  # today's tool sent b"1"
    plain = Record(0, 8, 0, b"bob/1/4", b"{}", (("source_partition", b"1"),
                                                ("source_key", b"bob")))
    assert republication(plain) == (b"{}", b"bob", None, 1)


def test_the_pseudonym_cache_is_a_bounded_lru_in_bytes() -> None:
    p = Pseudonymizer("k", cache_bytes=20_000)
    ids = [f"user-{i:06d}" for i in range(2_000)]
    for u in ids:
        p(u)
        p(ids[0])  # kept warm: the least recently used go first
    assert 0 < p.cache_bytes <= 20_000 and p.evictions > 0
    assert ids[0] in p._cache and ids[1] not in p._cache
    assert p(ids[1]) == Pseudonymizer("k")(ids[1])  # an evicted id hashes the same again
    # a 60 KB id is charged its size: it cannot blow the bound
    big = "x" * 60_000
    p(big)
    assert p.cache_bytes <= 20_000 and big not in p._cache
    assert sys.getsizeof(ids[0]) < 100
    off = Pseudonymizer("k", cache_bytes=0)
    assert off("u") == p("u") and off.cache_bytes == 0 and not off._cache


def test_the_cache_bound_is_a_validated_setting() -> None:
    assert Settings.from_env({}).id_cache_bytes == 32 << 20
    assert Settings.from_env({"PROFILES_ID_CACHE_BYTES": "0"}).id_cache_bytes == 0
    with pytest.raises(ConfigError, match="id_cache_bytes"):
        Settings.from_env({"PROFILES_ID_CACHE_BYTES": "-1"})
