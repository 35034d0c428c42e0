"""Pure pieces of state and privacy: rate cap, pseudonyms, dedupe window, snapshot fence,
secret settings."""

from __future__ import annotations

import hmac
from hashlib import sha256

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.bandit import BanditParams
from stream.core.dedupe import DedupeWindow
from stream.core.errors import ConfigError, StateError
from stream.core.profile import ProfileParams
from stream.core.ratelimit import RateCap
from stream.settings import Secret, Settings
from stream.worker.privacy import Pseudonymizer, tombstone_key
from stream.worker.snapshots import SnapshotStore
from stream.worker.state import PartitionState

pytestmark = pytest.mark.unit


@settings(derandomize=True, deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 5_000)), max_size=200),
       st.integers(1, 5), st.integers(1, 1000))
def test_rate_cap_equals_a_plain_count_per_window(events, limit, window):
    """For events in time order, the cap allows exactly the first `limit` per user and window."""
    events = sorted(events, key=lambda e: e[1])
    cap = RateCap(limit, window)
    allowed, updates = cap.check([u for u, _ in events], [t for _, t in events])
    cap.commit(updates)
    seen: dict[tuple[str, int], int] = {}
    want = []
    for user, t in events:
        k = (user, t // window)
        seen[k] = seen.get(k, 0) + 1
        want.append(seen[k] <= limit)
    assert allowed == want


def test_rate_cap_check_does_not_change_state_until_commit():
    cap = RateCap(1, 1000)
    assert cap.check(["u", "u"], [1, 2])[0] == [True, False]
    assert cap.check(["u"], [3])[0] == [True]  # nothing committed yet
    cap.commit(cap.check(["u"], [3])[1])
    assert cap.check(["u"], [4])[0] == [False]
    assert cap.check(["u"], [1500])[0] == [True]  # next window
    with pytest.raises(ValueError):
        RateCap(-1, 10)


def test_pseudonyms_are_keyed_hashes_and_scrub_dead_letters():
    p = Pseudonymizer("k")
    want = hmac.new(b"k", b"u1", sha256).hexdigest()[:32]
    assert p("u1") == want and p("u1") == want and p("u2") != want
    assert Pseudonymizer("other")("u1") != want
    assert Pseudonymizer("")("u1") == "u1" and not Pseudonymizer("").enabled
    scrubbed = orjson.loads(p.scrub(b'{"user_id": "u1", "type": "view"}', p("u1")))
    assert scrubbed == {"user_id": want, "type": "view"}
    assert p.scrub(b"not json u1", want) is None and p.scrub(b"[1]", want) is None
    assert tombstone_key("u1") == sha256(b"u1").hexdigest()[:32]


def test_dedupe_window_is_bounded_and_discard_works():
    w = DedupeWindow(3)
    for i in "abcd":
        w.add("u", i)
    assert not w.seen("u", "a") and all(w.seen("u", i) for i in "bcd") and len(w) == 3
    w.discard("u", "c")
    back = DedupeWindow.from_state(w.state(), 3)
    assert not back.seen("u", "c") and back.seen("u", "b") and back.seen("u", "d")


def _state(partition: int, offset: int) -> PartitionState:
    s = PartitionState.empty(partition, 4, ProfileParams(), BanditParams(), 10, "m")
    s.profiles.apply(["u"], np.array([1], dtype=np.int64), np.ones(1), np.ones((1, 4), np.float32))
    s.next_offset = offset
    return s


def test_snapshot_round_trip_and_fence(tmp_path):
    store = SnapshotStore(tmp_path, "events")
    assert store.write(0, store.dumps(_state(0, 10)))
    assert store.covered(0) == 10
    # a stalled former owner (fewer offsets) cannot replace the newer snapshot
    assert not store.write(0, store.dumps(_state(0, 7)))
    assert store.read(0)["next_offset"] == 10
    assert store.write(0, store.dumps(_state(0, 12)))
    back = PartitionState.from_dict(store.read(0), 4, ProfileParams(), BanditParams(), 10)
    assert back.next_offset == 12 and "u" in back.profiles
    store.path(1).write_bytes(b"garbage")
    with pytest.raises(StateError, match="bad header"):
        store.read(1)


def test_state_dir_of_another_model_is_refused(tmp_path):
    store = SnapshotStore(tmp_path, "events")
    store.check_model("anything")  # empty dir: fine
    store.mark_model("model-a")
    store.check_model("model-a")
    with pytest.raises(StateError, match="profiles rebuild"):
        store.check_model("model-b")


def test_secrets_never_print_but_reach_child_processes():
    s = Settings.from_env({"PROFILES_ID_SECRET": "hush"}, api_token="tok", sasl_password="pw")
    for secret in (s.id_secret, s.api_token, s.sasl_password):
        assert isinstance(secret, Secret)
        assert "hush" not in repr(s) + str(s) and "tok" not in f"{s.api_token}"
    assert s.to_env()["PROFILES_ID_SECRET"] == "hush" and s.api_token.reveal() == "tok"
    with pytest.raises(ConfigError, match="security_protocol"):
        Settings(security_protocol="TLS")
    with pytest.raises(ConfigError, match="rate_limit_events"):
        Settings(rate_limit_events=-1)
