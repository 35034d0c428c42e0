"""A restarted worker takes its killed predecessor out of the consumer group.

After a SIGKILL the dead member stays in the group until its session times out
(``PROFILES_SESSION_TIMEOUT_S``); a worker restarted meanwhile joins a group that still waits
for it, and Tansu rebalances twice (measured: kill -> partitions assigned 18.2 s with a 10 s
session, 5.0 s when the dead member is removed first; README draft of stop 21).

So each worker records its group member id in its state folder, one file per process
(``<state dir>/faust/members/<group>/<host>-<pid>.json``), rewritten when the id changes and
removed at a clean shutdown (the worker then leaves the group itself).  A worker starting on
that folder sends a LeaveGroup for every member recorded *on this host by a process that no
longer exists*: that member is certainly dead; so is a record with this process's own host and pid that
this process did not write (a container restarted in place: same hostname, the worker pid 1
again).  A live process's member (two workers sharing a folder), another host's, or an
unreadable record is never touched.  Best effort: a LeaveGroup
that fails (the broker down, the member already gone) only means the session timeout applies,
as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from stream.settings import Settings

__all__ = ["MemberRecord", "dead_members", "evict_dead_members", "forget_member",
           "leave_group", "members_dir", "record_member"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberRecord:
    path: Path
    member_id: str
    host: str
    pid: int


def members_dir(s: Settings, group: str) -> Path:
    return Path(s.state_dir) / "faust" / "members" / group


def _own_path(s: Settings, group: str) -> Path:
    return members_dir(s, group) / f"{socket.gethostname()}-{os.getpid()}.json"


#: member ids this process has recorded (its own record with another id is a predecessor's)
_MINE: set[str] = set()


def record_member(s: Settings, group: str, member_id: str) -> None:
    """Remember this process's member id (written atomically: a kill mid-write leaves the old
    record or none)."""
    _MINE.add(member_id)
    path = _own_path(s, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"member_id": member_id, "host": socket.gethostname(),
                               "pid": os.getpid()}))
    os.replace(tmp, path)


def forget_member(s: Settings, group: str) -> None:
    """At a clean shutdown: the worker leaves the group itself."""
    _own_path(s, group).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def dead_members(s: Settings, group: str) -> list[MemberRecord]:
    """Members recorded in the state folder by processes of this host that are gone."""
    host = socket.gethostname()
    out = []
    for path in sorted(members_dir(s, group).glob("*.json")):
        try:
            d = json.loads(path.read_text())
            rec = MemberRecord(path, str(d["member_id"]), str(d["host"]), int(d["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if rec.host != host or not rec.member_id:
            continue
        # this host's pid: a record with it that this process did not write is a predecessor's
        # (a container restarted in place runs its worker as the same pid, often 1)
        if (rec.member_id not in _MINE if rec.pid == os.getpid() else not _alive(rec.pid)):
            out.append(rec)
    return out


async def leave_group(s: Settings, group: str, member_ids: list[str]) -> dict[str, int]:
    """Send a LeaveGroup for each of ``member_ids`` to the group's coordinator; the error code
    of each (0: removed)."""
    from aiokafka.client import AIOKafkaClient, CoordinationType
    from aiokafka.protocol.group import LeaveGroupRequest

    from stream.kafka.clients import client_config

    client = AIOKafkaClient(**client_config(s, "aio_consumer"))
    try:
        await client.bootstrap()
        node = await client.coordinator_lookup(CoordinationType.GROUP, group)
        out = {}
        for m in member_ids:
            resp = await client.send(node, LeaveGroupRequest(group, m))
            out[m] = int(resp.error_code)
        return out
    finally:
        await client.close()


Leave = Callable[[Settings, str, list[str]], Awaitable[dict[str, int]]]


def evict_dead_members(s: Settings, group: str, timeout_s: float = 5.0,
                       leave: Leave = leave_group) -> int:
    """Remove from ``group`` the members recorded here by dead processes (see the module);
    returns how many the coordinator removed.  Blocks up to ``timeout_s`` (on its own event
    loop, in a thread: callable with or without a running loop); never raises."""
    dead = dead_members(s, group)
    if not dead:
        return 0
    ids = [d.member_id for d in dead]

    async def bounded() -> dict[str, int]:
        return await asyncio.wait_for(leave(s, group, ids), timeout_s)

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            codes = ex.submit(asyncio.run, bounded()).result(timeout_s + 5)
    except Exception as exc:
        log.warning("group %s: could not remove %d dead member(s) (%s: %s); their session "
                    "timeout applies", group, len(ids), type(exc).__name__, exc)
        return 0
    for d in dead:
        d.path.unlink(missing_ok=True)
    removed = sum(1 for c in codes.values() if c == 0)
    log.info("group %s: removed %d of %d member(s) of dead processes on this host "
             "(LeaveGroup error codes %s)", group, removed, len(ids), sorted(codes.values()))
    return removed
