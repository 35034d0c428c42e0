"""The consumer session timeout after a SIGKILL (issue 12, recovery).

Tansu answers a JoinGroup after a ~5 s join window, and a restarted worker starts joining
~1-3 s after the kill.  With a 10 s session the killed member was still in the group when that
first join closed, so a second rebalance followed once it expired: kill -> ready 21.1 s vs
6.7 s with 6 s on the same machine (README draft of stop 21, ``kill_bench.py``).  A member
whose ``on_partitions_assigned`` (the partition loads) outlasts the session keeps its
partitions: aiokafka sends no heartbeat during the callback, and Tansu did not evict it (15 s
callback, 6 s session: one assignment).
"""

from __future__ import annotations

from stream.settings import Settings


def test_default_session_timeout_lets_the_first_join_after_a_kill_drop_the_dead_member() -> None:
    s = Settings.from_env({})
    # kill -> restarted worker's JoinGroup (~1-3 s) + Tansu's join window (~5 s)
    assert s.session_timeout_s <= 6.0


def test_the_worker_app_gets_the_session_timeout_and_a_heartbeat_within_it() -> None:
    from stream.kafka.app import worker_app

    s = Settings.from_env({})
    conf = worker_app(s).conf
    assert conf.broker_session_timeout == s.session_timeout_s
    assert conf.broker_heartbeat_interval * 3 <= conf.broker_session_timeout
    assert conf.broker_request_timeout >= conf.broker_session_timeout  # faust refuses less
    assert Settings.from_env({"PROFILES_SESSION_TIMEOUT_S": "10"}).session_timeout_s == 10.0
