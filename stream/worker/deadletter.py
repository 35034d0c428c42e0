"""Dead letters: what a rejected record becomes on the DLQ topic.

Key ``user/partition/offset`` (unique, so one user's records can be erased one by one through
log compaction); value the original bytes (with a pseudonymised user id when
``PROFILES_ID_SECRET`` is set, or nothing when it cannot be parsed); headers ``reason``,
``detail``, ``source_topic``, ``source_partition``, ``source_offset`` and ``source_key`` (or a
flag saying the id is already hashed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from stream.worker.ports import DeadLetterSink, Header
from stream.worker.privacy import HASHED_HEADER, Pseudonymizer
from stream.worker.state import PartitionState

__all__ = ["DeadLetter", "dead_letter", "user_of"]


@dataclass(slots=True)
class DeadLetter:
    """A rejected record on its way to the DLQ (``dlq_key`` is set when it is sent)."""

    st: PartitionState
    key: bytes | None
    raw: bytes
    reason: str
    detail: str
    offset: int
    etype: str
    user: str | None
    dlq_key: bytes = b""
    scrubbed: bool = False  # raw already has its user id pseudonymised


def user_of(raw: bytes, pseudonymize: Pseudonymizer) -> str | None:
    """The (pseudonymised) user id of an invalid record, when it has one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    uid = obj.get("user_id") if isinstance(obj, dict) else None
    if isinstance(uid, (str, int)) and not isinstance(uid, bool) and str(uid):
        return pseudonymize(str(uid))
    return None


async def dead_letter(rejects: list[DeadLetter], send_dlq: DeadLetterSink,
                      pseudonymize: Pseudonymizer, source_topic: str) -> None:
    """Send rejects to the DLQ: key ``user/partition/offset`` (unique, so a user's records
    can be erased one by one through log compaction), headers with reason and source."""
    sends = []
    for r in rejects:
        if r.user is None:
            r.user = user_of(r.raw, pseudonymize)
        value = (pseudonymize.scrub(r.raw) if pseudonymize.enabled and not r.scrubbed
                 else r.raw)
        r.dlq_key = f"{r.user or '?'}/{r.st.partition}/{r.offset}".encode()
        headers: list[Header] = [
            ("reason", r.reason.encode()), ("detail", r.detail.encode()[:500]),
            ("source_topic", source_topic.encode()),
            ("source_partition", str(r.st.partition).encode()),
            ("source_offset", str(r.offset).encode())]
        if pseudonymize.enabled:
            headers.append((HASHED_HEADER, b"1"))
        else:
            headers.append(("source_key", r.key or b""))
        sends.append(send_dlq(r.dlq_key, value, headers))
    await asyncio.gather(*sends)
