"""A restarted worker removes the group members its SIGKILLed predecessors left
(stream.kafka.rejoin): only members recorded on this host by processes that are gone."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from stream.kafka.rejoin import (
    dead_members,
    evict_dead_members,
    forget_member,
    members_dir,
    record_member,
)
from stream.settings import Settings

GROUP = "g-test"


@pytest.fixture
def s(tmp_path) -> Settings:
    return Settings.from_env({}, state_dir=str(tmp_path / "state"))


@pytest.fixture
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(30)
    return p.pid


@pytest.fixture
def live_proc():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait(30)


def _write(s: Settings, name: str, member: str, pid: int, host: str | None = None) -> None:
    d = members_dir(s, GROUP)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps({"member_id": member, "pid": pid,
                                                "host": host or socket.gethostname()}))


def _records(s: Settings, dead_pid: int, live_pid: int) -> None:
    _write(s, "dead", "m-dead", dead_pid)
    _write(s, "live", "m-live", live_pid)
    record_member(s, GROUP, "m-self")  # this process's own record
    _write(s, "elsewhere", "m-other-host", dead_pid, host=socket.gethostname() + "-other")
    (members_dir(s, GROUP) / "torn.json").write_text('{"member_id": "m-torn", "pi')


def test_only_members_of_dead_processes_on_this_host_are_dead(s, dead_pid, live_proc) -> None:
    _records(s, dead_pid, live_proc.pid)
    assert [d.member_id for d in dead_members(s, GROUP)] == ["m-dead"]
    assert dead_members(s, "another-group") == []


def test_evict_leaves_for_the_dead_members_only_and_drops_their_records(
        s, dead_pid, live_proc) -> None:
    _records(s, dead_pid, live_proc.pid)
    asked: list[tuple[str, list[str]]] = []

    async def leave(_s: Settings, group: str, ids: list[str]) -> dict[str, int]:
        asked.append((group, ids))
        return dict.fromkeys(ids, 0)

    assert evict_dead_members(s, GROUP, leave=leave) == 1
    assert asked == [(GROUP, ["m-dead"])]
    left = sorted(p.stem for p in members_dir(s, GROUP).glob("*.json"))
    assert left == sorted(["elsewhere", "live", f"{socket.gethostname()}-{os.getpid()}", "torn"])
    assert evict_dead_members(s, GROUP, leave=leave) == 0  # nothing left to remove
    assert len(asked) == 1


@pytest.mark.parametrize("failure", ["raises", "hangs"])
def test_a_failed_leave_is_not_fatal_and_keeps_the_record(s, dead_pid, failure) -> None:
    _write(s, "dead", "m-dead", dead_pid)

    async def leave(_s: Settings, group: str, ids: list[str]) -> dict[str, int]:
        if failure == "raises":
            raise ConnectionError("broker down")
        await asyncio.Event().wait()
        return {}

    assert evict_dead_members(s, GROUP, timeout_s=0.2, leave=leave) == 0
    assert [d.member_id for d in dead_members(s, GROUP)] == ["m-dead"]


def test_a_running_event_loop_does_not_stop_the_eviction(s, dead_pid) -> None:
    _write(s, "dead", "m-dead", dead_pid)

    async def leave(_s: Settings, group: str, ids: list[str]) -> dict[str, int]:
        return {i: 25 for i in ids}  # UNKNOWN_MEMBER_ID: already gone

    async def main() -> int:
        return evict_dead_members(s, GROUP, leave=leave)

    assert asyncio.run(main()) == 0
    assert dead_members(s, GROUP) == []  # the record is dropped all the same


def test_record_and_forget_this_process(s) -> None:
    record_member(s, GROUP, "m-1")
    record_member(s, GROUP, "m-2")
    files = list(members_dir(s, GROUP).glob("*"))
    assert len(files) == 1
    assert json.loads(files[0].read_text()) == {"member_id": "m-2", "host": socket.gethostname(),
                                                "pid": os.getpid()}
    assert dead_members(s, GROUP) == []  # this process is alive
    forget_member(s, GROUP)
    assert list(members_dir(s, GROUP).glob("*")) == []


def test_a_record_with_this_pid_written_by_a_predecessor_is_dead(s) -> None:
    # a container restarted in place: same hostname, the worker is pid 1 again; the record
    # under this process's own name was written by the killed predecessor, not by us
    _write(s, f"{socket.gethostname()}-{os.getpid()}", "m-predecessor", os.getpid())
    assert [d.member_id for d in dead_members(s, GROUP)] == ["m-predecessor"]
    record_member(s, GROUP, "m-now")  # once this process has joined, its record is its own
    assert dead_members(s, GROUP) == []
