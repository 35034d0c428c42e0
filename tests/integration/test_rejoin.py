"""On the real broker: a SIGKILLed member recorded in the state folder is taken out of its
consumer group by the next process (stream.kafka.rejoin), instead of staying until its session
times out (12 s here)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from stream.kafka.clients import create_topics
from stream.kafka.rejoin import dead_members, evict_dead_members
from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

MEMBER = textwrap.dedent("""
    import asyncio, sys
    from aiokafka import AIOKafkaConsumer
    from stream.kafka.rejoin import record_member
    from stream.settings import Settings

    async def main(bootstrap, topic, group, state_dir):
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             session_timeout_ms=12000, heartbeat_interval_ms=1000)
        await c.start()
        while not c.assignment():
            await c.getmany(timeout_ms=200)
        record_member(Settings.from_env({}, state_dir=state_dir), group,
                      c._coordinator.member_id)
        print("assigned", flush=True)
        while True:
            await c.getmany(timeout_ms=200)

    asyncio.run(main(*sys.argv[1:]))
""")


def _members(s: Settings, group: str) -> list[str]:
    """The group's members, as its coordinator describes them (aiokafka: kafka-python's
    describe_groups fails on Tansu's authorized-operations field)."""
    from aiokafka.client import AIOKafkaClient, CoordinationType
    from aiokafka.protocol.admin import DescribeGroupsRequest

    async def describe() -> list[str]:
        client = AIOKafkaClient(bootstrap_servers=s.bootstrap_servers)
        try:
            await client.bootstrap()
            node = await client.coordinator_lookup(CoordinationType.GROUP, group)
            resp = await client.send(node, DescribeGroupsRequest([group]))
            (g,) = resp.groups
            return [m[0] for m in g[5]]
        finally:
            await client.close()

    return asyncio.run(asyncio.wait_for(describe(), 30))


def test_a_killed_members_successor_removes_it_from_the_group(broker, tmp_path) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, group = f"rejoin-{tag}", f"rejoin-g-{tag}"
    s = Settings.from_env({}, bootstrap_servers=broker.bootstrap,
                          state_dir=str(tmp_path / "state"))
    create_topics(s, {topic: 4})
    child = subprocess.Popen([sys.executable, "-c", MEMBER, broker.bootstrap, topic, group,
                              s.state_dir], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    with child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "assigned"
        (rec,) = [r for r in (tmp_path / "state").glob("faust/members/*/*.json")]
        assert rec.exists()
        assert len(_members(s, group)) == 1
        child.kill()
        child.wait(30)
    # the session (12 s) keeps the dead member in the group ...
    assert len(_members(s, group)) == 1
    # ... until its successor on this state folder removes it
    assert evict_dead_members(s, group, timeout_s=30) == 1
    assert _members(s, group) == []
    assert dead_members(s, group) == []
