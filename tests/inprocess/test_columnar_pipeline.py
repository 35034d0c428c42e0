"""Issue 14 point 3, through the in-process worker: the batch steps of the apply phase
(stream.worker.batchsteps: one journal mark and one vectorised dedupe add per partition, the
columnar decode of classify) change exactly what the per-event steps changed.

The expectations are computed from the batch itself (which events are new, duplicates,
rejected, over the rate cap), independently of the code under test."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from encoder.fake import HashingEncoder
from stream.core.dedupe import DedupeWindow
from stream.settings import Settings
from stream.worker.testing import InProcessWorker

pytestmark = pytest.mark.inprocess

T = 1_700_000_000_000
ITEMS = [{"item_id": f"i{i}", "title": f"item {i}", "category": f"c{i % 2}"} for i in range(4)]


def _ev(n: int, user: str, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"e{n}", "user_id": user, "type": "view", "ts": T + n,
            "item_id": f"i{n % 4}"} | kw


def test_journal_and_dedupe_window_after_a_mixed_batch(tmp_path: Path) -> None:
    settings = Settings.from_env({}, state_dir=str(tmp_path / "s"), rate_limit_events=3,
                                 rate_limit_window_ms=60_000, dedupe_window=50)

    async def main() -> None:
        async with InProcessWorker(settings, HashingEncoder(16), partitions=[0]) as w:
            await w.items(ITEMS)
            st = w.pipeline.profiles.states[0]
            first = [_ev(n, f"u{n % 5}") for n in range(20)]  # 4 per user: one over the cap
            await w.events(first, partition=0)
            # the oracle of the window: every pair applied (or parked), in log order, one by one
            oracle = DedupeWindow(50)
            counts: dict[str, int] = {}
            for e in first:
                counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
                if counts[e["user_id"]] <= 3:  # the fourth of each user is rate limited
                    oracle.add(e["user_id"], e["event_id"])
            assert st.dedupe.state() == oracle.state()

            st.journal.users = set()  # as a snapshot leaves it
            second: list[dict[str, Any] | bytes] = [
                _ev(100, "new1"),  # applied
                _ev(101, "new2", item_id="unknown"),  # parked (its user changes: counted)
                _ev(3, "u3"),  # a duplicate of the first batch: changes nothing of u3
                b"{not json",  # rejected, no user
                _ev(102, "u0"),  # u0 is over the cap: rejected with a user (its DLQ keys)
                _ev(103, "new3", type="search", query="red"),  # applied (a query)
                _ev(100, "new1"),  # a duplicate in the batch
            ]
            await w.events(second, partition=0)
            assert st.journal.users == {"new1", "new2", "new3", "u0"}
            # 5 of the first batch (the fourth event of each user), 1 of this one
            assert w.dead_letters.reasons() == {"bad_json": 1, "rate_limited": 6}
            for user, eid in (("new1", "e100"), ("new2", "e101"), ("new3", "e103")):
                oracle.add(user, eid)
            assert st.dedupe.state() == oracle.state()
            assert st.outcomes[("view", "duplicate")] == 2

    asyncio.run(main())


def test_a_full_window_after_many_batches_equals_one_fed_event_by_event(tmp_path) -> None:
    """Batches of new events past the window's capacity (the vectorised add with evictions)
    and a few re-sent ones: the window equals one fed pair by pair, and a re-sent event of a
    pair that has left the window is applied again (as before: the window is bounded)."""
    settings = Settings.from_env({}, state_dir=str(tmp_path / "s"), dedupe_window=64)

    async def main() -> None:
        async with InProcessWorker(settings, HashingEncoder(16), partitions=[0]) as w:
            await w.items(ITEMS)
            st = w.pipeline.profiles.states[0]
            oracle = DedupeWindow(64)
            applied = 0
            for b in range(6):
                batch = [_ev(40 * b + i, f"u{i % 7}") for i in range(40)]
                if b:
                    batch.append(_ev(40 * b - 3, f"u{(40 - 3) % 7}"))  # in the window: dup
                await w.events([orjson.dumps(e) for e in batch], partition=0)
                for e in batch[:40]:
                    oracle.add(e["user_id"], e["event_id"])
                applied += 40
                assert st.dedupe.state() == oracle.state()
            assert w.pipeline.summary()["events_applied"] == applied
            assert w.pipeline.summary()["events_duplicate"] == 5

    asyncio.run(main())
