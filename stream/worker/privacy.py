"""Pseudonymous user ids: HMAC-SHA256 with ``PROFILES_ID_SECRET``, applied at ingest.

With a secret set, the raw user id never reaches state, indexes, snapshots, logs, metrics or
the dead-letter topic: the worker hashes it right after decoding, and the HTTP API hashes the
id in the URL.  Without a secret the functions are the identity and raw ids are stored.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson

# A record re-published from the DLQ already carries the hashed id: this header says so.
HASHED_HEADER = "profiles-id-hashed"


def tombstone_key(user_id: str) -> str:
    """How a forgotten user is remembered: a one-way hash, never the id itself."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:32]


class Pseudonymizer:
    def __init__(self, secret: str, cache_size: int = 200_000) -> None:
        self._key = secret.encode() if secret else b""
        self._cache: dict[str, str] = {}
        self._cache_size = cache_size

    @property
    def enabled(self) -> bool:
        return bool(self._key)

    def __call__(self, user_id: str) -> str:
        if not self._key:
            return user_id
        out = self._cache.get(user_id)
        if out is None:
            out = hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()[:32]
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # cheap bound; hashing is only ~1 us
            self._cache[user_id] = out
        return out

    def scrub(self, raw: bytes) -> bytes | None:
        """A dead-letter value safe to keep: the record with its user id hashed, or None when
        it cannot be parsed (then only the reason and offset are kept)."""
        if not self._key:
            return raw
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        uid = obj.get("user_id")
        if isinstance(uid, (str, int)) and not isinstance(uid, bool):
            obj["user_id"] = self(str(uid))
        else:
            obj.pop("user_id", None)
        return orjson.dumps(obj)
