"""Dead letters: what a rejected record becomes on the DLQ topic.

Key ``user/partition/offset`` (unique, so one user's records can be erased one by one through
log compaction); value the original bytes (with a pseudonymised user id when
``PROFILES_ID_SECRET`` is set, or nothing when it cannot be parsed); headers ``reason``,
``detail``, ``source_topic``, ``source_partition``, ``source_offset`` and ``source_key``
(a value over ``PROFILES_MAX_REQUEST_BYTES`` is cut, with ``truncated``, ``original_size`` and
``sha256`` of the whole value), or, with a secret, ``profiles-id-hashed``: the tag proving the value's id is already pseudonymised
(``stream.worker.privacy``), which ``profiles dlq replay`` passes on.

The id is hashed exactly once, whatever way the record came: a dead letter whose user is known
(an accepted event: rate-capped, parked) gets that pseudonym written into its value; one that
was re-published with a valid tag is kept as it is; only a record read straight from a
producer has its id hashed here.  A record with a tag that does not verify names no user at
all (key ``?/partition/offset``, no ``user_id`` in the value): nothing it says about its user
can be trusted, and hashing a pseudonym again would file it under a phantom.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import orjson

from stream.worker.ports import DeadLetterSink, Header
from stream.worker.privacy import HASHED_HEADER, Pseudonymizer
from stream.worker.state import PartitionState

__all__ = ["DeadLetter", "dead_letter", "truncate", "untrusted", "user_of"]


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
    #: raw's user id is already pseudonymised (or removed): stored as it is, read as it is
    scrubbed: bool = False


def user_of(raw: bytes, pseudonymize: Pseudonymizer | None, max_id_bytes: int = 256
            ) -> str | None:
    """The (pseudonymised) user id of an invalid record, when it has one; ``pseudonymize``
    None: the id is already pseudonymised, taken as it is.  An id over ``max_id_bytes``
    (``PROFILES_MAX_ID_BYTES``) names no user: it would become a state key (``dlq_keys``)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    uid = obj.get("user_id") if isinstance(obj, dict) else None
    if isinstance(uid, (str, int)) and not isinstance(uid, bool) and str(uid):
        uid = str(uid)
        if len(uid.encode("utf-8", "surrogatepass")) > max_id_bytes:
            return None
        return uid if pseudonymize is None else pseudonymize(uid)
    return None


def untrusted(st: PartitionState, raw: bytes, offset: int, pseudonymize: Pseudonymizer
              ) -> DeadLetter:
    """The dead letter of a record whose ``profiles-id-hashed`` tag does not verify (forged,
    altered, sent to another partition, or made with another secret): ``bad_id_header``, its
    value without any user id, filed under no user."""
    return DeadLetter(st, None, pseudonymize.scrub(raw, None) or b"", "bad_id_header",
                      f"the {HASHED_HEADER} header does not authenticate this record in "
                      f"partition {st.partition} (forged, altered, moved, or made with another "
                      "PROFILES_ID_SECRET)", offset, "unknown", None, scrubbed=True)


#: bytes kept free under the producer's ``max_request_size`` for the record batch's framing
RECORD_OVERHEAD = 1024


def truncate(value: bytes, key: bytes, headers: list[Header], max_request_bytes: int
             ) -> tuple[bytes, list[Header]]:
    """``value`` cut to what fits one produce request of ``max_request_bytes`` with its key and
    headers (``PROFILES_MAX_REQUEST_BYTES``: the producer refuses more), with headers
    ``truncated``, ``original_size`` and ``sha256`` (of the whole value) added; a value that
    fits is returned as it is."""
    def size(hs: list[Header]) -> int:
        return len(key) + sum(len(k) + len(v) for k, v in hs) + RECORD_OVERHEAD

    if len(value) + size(headers) <= max_request_bytes:
        return value, headers
    headers = [*headers, ("truncated", b"1"), ("original_size", str(len(value)).encode()),
               ("sha256", hashlib.sha256(value).hexdigest().encode())]
    return value[:max(0, max_request_bytes - size(headers) - 128)], headers


async def dead_letter(rejects: list[DeadLetter], send_dlq: DeadLetterSink,
                      pseudonymize: Pseudonymizer, source_topic: str,
                      max_id_bytes: int = 256, max_request_bytes: int = 1_048_576,
                      max_refs: int = 0) -> int:
    """Send rejects to the DLQ: key ``user/partition/offset`` (unique, so a user's records
    can be erased one by one through log compaction), headers with reason and source.  A
    value too big for one produce request is stored truncated (:func:`truncate`); with a
    secret its tag is computed over the bytes actually sent.

    ``max_refs`` (``PROFILES_DLQ_REFS_PER_USER``; 0: no bound): the state remembers each
    user's DLQ keys for erasure, so one user flooding bad records would grow it without
    bound.  A user's dead letter beyond ``max_refs`` remembered in its partition is stored
    *anonymous*: no value, key ``?/partition/offset``, header ``value_dropped`` — nothing to
    erase and nothing to replay; its reason and offset are kept.  Returns how many."""
    sends = []
    enabled = pseudonymize.enabled
    pending: dict[tuple[int, str], int] = {}
    dropped = 0
    for r in rejects:
        if r.user is None:  # (an untrusted record's value holds no user id: it stays None)
            r.user = user_of(r.raw, None if r.scrubbed or not enabled else pseudonymize,
                             max_id_bytes)
        value: bytes | None = r.raw
        anonymous = False
        if max_refs and r.user is not None:
            at = (r.st.partition, r.user)
            n = len(r.st.dlq_keys.get(r.user, ())) + pending.get(at, 0)
            if n >= max_refs:
                anonymous, r.user, value = True, None, None
                dropped += 1
            else:
                pending[at] = pending.get(at, 0) + 1
        if enabled and not r.scrubbed and value is not None:  # the id becomes the pseudonym
            value = pseudonymize.scrub(r.raw, r.user)
        r.dlq_key = f"{r.user or '?'}/{r.st.partition}/{r.offset}".encode()
        headers: list[Header] = [
            ("reason", r.reason.encode()), ("detail", r.detail.encode()[:500]),
            ("source_topic", source_topic.encode()),
            ("source_partition", str(r.st.partition).encode()),
            ("source_offset", str(r.offset).encode())]
        if not enabled and not anonymous:
            headers.append(("source_key", r.key or b""))
        if anonymous:
            headers.append(("value_dropped", f"over {max_refs} dead letters of this user in "
                            "this partition (PROFILES_DLQ_REFS_PER_USER)".encode()))
        if value:
            value, headers = truncate(value, r.dlq_key, headers,
                                      max_request_bytes - (100 if enabled else 0))
        if enabled:
            if value:
                headers.append((HASHED_HEADER, pseudonymize.tag(r.st.partition, value)))
            else:
                value = None  # unparseable: only the reason and offset are kept
        sends.append(send_dlq(r.dlq_key, value, headers))
    await asyncio.gather(*sends)
    return dropped
