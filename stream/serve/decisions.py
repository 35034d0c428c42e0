"""Decision logging: every served ranking, with the propensity of each shown arm.

``/users/{id}/candidates?...`` asks :func:`decision_record` for one JSON record per served
ranking and hands it to a :class:`DecisionLogger`, which publishes it to the
``PROFILES_DECISIONS_TOPIC`` topic (key = user id) through a :class:`DecisionSink` (the Kafka
layer's producer, started on first use).  Record::

    {"decision_id": "<uuid4 hex>", "user_id": "u1", "ts": 1700000000000,
     "policy": "thompson:samples=1000", "explore_weight": 0.2, "k": 3, "pool": 50,
     "propensity_method": "monte-carlo", "propensity_samples": 1000,
     "shown": [{"arm": "i7", "position": 0, "propensity": 0.412, "score": 0.83}, ...]}

``propensity`` is P(the policy puts this arm at this position | the same pool, similarities
and posteriors).  It describes what was served only because the served ranking is itself a
fresh draw (``Queries.rng``: one generator per worker, seeded from ``PROFILES_SEED``, moving on
with every request); a generator seeded by (seed, user) would serve one fixed ranking per user
while these propensities claim the policy's spread.  UCB1 is deterministic (1.0); epsilon-greedy has a closed form; Thompson
sampling has none, so it is estimated from ``samples`` (>= 1,000) re-samples drawn from a
generator seeded by (seed, user, decision_id), plus the served draw itself:
``p = (1 + hits) / (1 + samples)``.  Standard error ``sqrt(p (1 - p) / samples)`` — at most
0.016 at 1,000 re-samples, 0.0095 for p = 0.1 — and an upward bias of at most
``1 / (1 + samples)`` from counting the served draw (which also keeps p > 0).  The unit tests
check the estimate against a numerical integral for the top position.

Erasure: a record carries the id the state uses (the pseudonym with ``PROFILES_ID_SECRET``,
the raw id without) as its key and ``user_id``.  A ``forget`` does not reach this topic, by
design: it is an append-only log kept for off-policy evaluation, so it must not be compacted
(compaction keeps one record per key: one decision per user), and a tombstone on a
delete-policy topic erases nothing.  Decision records are erased by the topic's retention
(``retention.ms``; Kafka's default is 7 days): set it no longer than the erasure deadline you
promise.  The worker keeps no list of a user's decisions (one per request: unbounded).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import orjson

from stream.core.bandit import seeded_rng
from stream.core.policies import Policy

__all__ = ["DecisionLogger", "DecisionSink", "decision_record"]

log = logging.getLogger(__name__)


def decision_record(policy: Policy, user: str, arms: Sequence[str], alpha: np.ndarray,
                    beta: np.ndarray, similarity: np.ndarray, explore_weight: float,
                    order: list[int], k: int, seed: int, decision_id: str | None = None,
                    ts_ms: int | None = None) -> dict[str, Any]:
    """The logged record of one served ranking ``order`` (indices into ``arms``)."""
    decision_id = decision_id or uuid.uuid4().hex
    samples = int(getattr(policy.config, "samples", 0))
    rng = seeded_rng(seed, user, "propensity", decision_id)
    props = policy.propensities(alpha, beta, order, k, rng, similarity=similarity,
                                explore_weight=explore_weight)
    method = ("deterministic" if not policy.stochastic
              else "monte-carlo" if samples else "closed-form")
    return {
        "decision_id": decision_id,
        "user_id": user,
        "ts": int(time.time() * 1000) if ts_ms is None else ts_ms,
        "policy": policy.describe(),
        "explore_weight": explore_weight,
        "k": k,
        "pool": len(arms),
        "propensity_method": method,
        "propensity_samples": samples if method == "monte-carlo" else 0,
        "shown": [{"arm": arms[i], "position": j, "propensity": float(props[j])}
                  for j, i in enumerate(order[:k])],
    }


class DecisionSink(Protocol):
    """Where decision records go: the Kafka layer's ``AsyncTopicProducer`` (its ``send`` starts
    the producer and creates the topic on first use, with the settings' security)."""

    async def send(self, key: bytes, value: bytes) -> None: ...

    async def close(self) -> None: ...


class DecisionLogger:
    """Publishes decision records; never blocks or fails a request.  At most ``max_pending``
    records wait to be sent (beyond that they are dropped and counted)."""

    def __init__(self, sink: DecisionSink, max_pending: int = 10_000) -> None:
        self.sink = sink
        self.max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    async def _send(self, key: bytes, value: bytes) -> None:
        try:
            await self.sink.send(key, value)
            self.sent += 1
        except Exception as exc:  # logged and counted; a request never fails for it
            self.failed += 1
            log.warning("decision not logged: %s", exc)

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue one record for sending (False when too many are already pending)."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return False
        task = asyncio.get_running_loop().create_task(
            self._send(str(record["user_id"]).encode(), orjson.dumps(record)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def close(self) -> None:
        """Wait for records in flight, then stop the sink."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.sink.close()
