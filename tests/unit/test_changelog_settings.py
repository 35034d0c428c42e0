"""The changelog's settings (PROFILES_CHANGELOG, PROFILES_CHANGELOG_TOPIC) and what they build."""

from __future__ import annotations

import pytest

from stream.core.errors import ConfigError
from stream.kafka.changelog import (
    CHANGELOG_TOPIC_CONFIG,
    KafkaBlobStore,
    TieredBlobStore,
    changelog_store,
    changelog_topics,
)
from stream.settings import Settings
from stream.worker.blobs import LocalBlobStore

pytestmark = pytest.mark.unit


def test_the_topic_defaults_to_the_events_topics_and_is_compacted() -> None:
    s = Settings.from_env({}, events_topic="ev", partitions=3)
    assert s.changelog and s.changelog_topic_name() == "ev-changelog"
    assert changelog_topics(s) == ({"ev-changelog": 3}, {"ev-changelog": CHANGELOG_TOPIC_CONFIG})
    assert CHANGELOG_TOPIC_CONFIG["cleanup.policy"] == "compact"
    named = Settings.from_env({"PROFILES_CHANGELOG_TOPIC": "state.log"})
    assert named.changelog_topic_name() == "state.log"
    assert changelog_topics(Settings.from_env({"PROFILES_CHANGELOG": "off"})) == ({}, {})


@pytest.mark.parametrize("bad", ["two words", "a/b", "x" * 250, ".."])
def test_a_bad_topic_name_is_one_line(bad: str) -> None:
    with pytest.raises(ConfigError, match="changelog_topic must be a Kafka topic name"):
        Settings.from_env({"PROFILES_CHANGELOG_TOPIC": bad})


def test_the_worker_store_is_tiered_in_its_models_namespace_unless_off(tmp_path) -> None:
    local = LocalBlobStore(tmp_path)
    assert changelog_store(Settings.from_env({"PROFILES_CHANGELOG": "0"}), local, "m") is local
    s = Settings.from_env({}, bootstrap_servers="127.0.0.1:1", events_topic="ev")
    store = changelog_store(s, local, "model-1")  # no broker contact until first used
    assert isinstance(store, TieredBlobStore) and isinstance(store.remote, KafkaBlobStore)
    assert store.remote.namespace == "model-1" and store.remote.topic == "ev-changelog"
    assert store.remote.holds("ev-3/manifest") and store.remote.holds("ev-3.snap")
    assert not store.remote.holds("ev-x/manifest") and not store.remote.holds("items-catalogue")
    assert store.remote.partition_of("ev-31/manifest") == 31
    # names outside the events partitions never touch the broker
    store.put("items.catalogue", b"x")
    assert store.get("items.catalogue") == b"x"
