"""Issue 10, point 1: a failure while processing never loses or half-applies a batch.

Reproduced with ``profiles demo``: a 2 MB ``search`` event is rejected ``oversized``, the DLQ
send of its full value is refused by the producer (over ``max_request_size``), the agent
crashes and faust skips the whole in-flight batch.  Here the in-memory DLQ refuses what the
real producer refuses; every test checks that no offset is skipped (``profiles_offset_gaps``
stays 0: the ``ProfilesOffsetsSkipped`` alert stays silent) and that every record has exactly
one outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.settings import Settings
from stream.worker.ports import Header
from stream.worker.testing import DeadLetters, InProcessWorker
from tests.inprocess.test_pipeline import DIM, ITEMS, ev, outcomes

pytestmark = pytest.mark.inprocess

#: faust's default ``producer_max_request_size`` (what the demo's producer refused)
PRODUCER_LIMIT = 1_000_000


class TooLarge(Exception):
    """What aiokafka raises for a record over ``max_request_size`` (MessageSizeTooLargeError)."""


class LimitedDLQ(DeadLetters):
    """An in-memory DLQ that refuses what the real producer refuses: a record over its
    ``max_request_size`` (value + key + headers)."""

    async def __call__(self, key: bytes | None, value: bytes | None,
                       headers: list[Header]) -> None:
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > PRODUCER_LIMIT:
            raise TooLarge(f"The message is {size} bytes when serialized which is larger than "
                           f"the maximum request size you have configured")
        await super().__call__(key, value, headers)


class FaultyEncoder(HashingEncoder):
    """Fails (``fail_times`` calls) on texts holding ``boom``; forever on ``poison``; gives a
    NaN vector for ``nan``."""

    def __init__(self, dim: int, fail_times: int = 0) -> None:
        super().__init__(dim)
        self.fail_times = fail_times
        self.calls = 0

    def encode(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        if any("poison" in t for t in texts):
            raise RuntimeError("encoder: poison")
        if any("boom" in t for t in texts) and self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("encoder: CUDA out of memory (transient)")
        out = np.asarray(super().encode(texts, **kw), dtype=np.float32).copy()
        for i, t in enumerate(texts):
            if "nan" in t:
                out[i] = np.nan
        return out


def settings(tmp_path: Path, **kw: Any) -> Settings:
    kw.setdefault("retry_backoff_s", 0.001)
    kw.setdefault("retry_max_backoff_s", 0.002)
    kw.setdefault("max_request_bytes", PRODUCER_LIMIT)
    return Settings.from_env({}, state_dir=str(tmp_path / "state"), **kw)


def run(tmp_path: Path, body: Callable[[InProcessWorker], Awaitable[None]], *,
        encoder: HashingEncoder | None = None, dlq: DeadLetters | None = None,
        **kw: Any) -> None:
    async def main() -> None:
        async with InProcessWorker(settings(tmp_path, **kw), encoder or HashingEncoder(DIM),
                                   dead_letters=dlq if dlq is not None else LimitedDLQ()) as w:
            await w.items(ITEMS)
            await body(w)
            assert_no_gap(w)

    asyncio.run(main())


def counter(w: InProcessWorker, name: str, **labels: str) -> float:
    v = w.pipeline.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


def assert_no_gap(w: InProcessWorker) -> None:
    """No offset skipped (the ProfilesOffsetsSkipped alert's input stays 0), and every record
    the source made is covered by the state."""
    for p in range(w.settings.partitions):
        assert counter(w, "profiles_offset_gaps_total", topic=w.settings.events_topic,
                       partition=str(p)) == 0
    for p, st in w.pipeline.states.items():
        assert st.next_offset == w.source.next_offset[p], p


def users_everywhere(n: int = 12) -> list[dict[str, Any]]:
    """Events of ``n`` users (in every partition of four)."""
    return [ev(f"e{i}", f"user{i}", "view", item_id=f"i{i % 6}") for i in range(n)]


def test_an_oversized_event_whose_dead_letter_is_too_large_loses_nothing(tmp_path: Path) -> None:
    """The demo's crash: a 2 MB search among events of users in every partition."""
    big = ev("big", "user0", "search", query="x" * 2_000_000)

    async def body(w: InProcessWorker) -> None:
        await w.events([*users_everywhere()[:6], big, *users_everywhere()[6:]])
        assert {p for p in range(4) if w.pipeline.states[p].next_offset} == {0, 1, 2, 3}
        assert w.dead_letters.reasons() == {"oversized": 1}
        (dl,) = [r for r in w.dead_letters.records if r.value is not None]
        assert len(dl.value or b"") < PRODUCER_LIMIT
        h = dl.headers
        assert h["truncated"] == b"1"
        size = int(h["original_size"])
        assert size > 2_000_000
        assert h["source_offset"] and h["reason"] == b"oversized"
        assert len(h["sha256"]) == 64
        assert outcomes(w)[("view", "applied")] == 12
        assert outcomes(w)[("unknown", "rejected")] == 1  # (rejected before decoding)
        for i in range(12):
            assert w.pipeline.profiles.owner(f"user{i}") is not None

    run(tmp_path, body)


def test_the_truncated_dead_letter_keeps_the_sha256_of_the_original(tmp_path: Path) -> None:
    big = ev("big", "u1", "search", query="y" * 1_500_000)

    async def body(w: InProcessWorker) -> None:
        (rec,) = await w.events([big])
        (dl,) = w.dead_letters.records
        assert dl.headers["sha256"].decode() == hashlib.sha256(rec.value or b"").hexdigest()
        assert int(dl.headers["original_size"]) == len(rec.value or b"")
        assert (rec.value or b"").startswith(dl.value or b"-")

    run(tmp_path, body)


def test_a_transient_encoder_error_is_retried_then_applied_never_dead_lettered(
        tmp_path: Path) -> None:
    enc = FaultyEncoder(DIM, fail_times=2)

    async def body(w: InProcessWorker) -> None:
        await w.events([*users_everywhere(), ev("s", "user1", "search", query="boom shoes")])
        assert w.dead_letters.records == []
        assert outcomes(w)[("search", "applied")] == 1
        assert outcomes(w)[("view", "applied")] == 12
        assert counter(w, "profiles_batch_retries_total", kind="transient") == 2

    run(tmp_path, body, encoder=enc)


def test_a_record_that_keeps_failing_is_dead_lettered_alone_and_the_rest_applied(
        tmp_path: Path) -> None:
    """Bisection: a NaN query vector (would poison the profile and the index) and a record
    whose processing raises every time; everything else of the batch is applied once."""
    async def body(w: InProcessWorker) -> None:
        before = {p: st.next_offset for p, st in w.pipeline.states.items()}
        await w.events([*users_everywhere()[:5], ev("n", "user1", "search", query="nan shoes"),
                        *users_everywhere()[5:],
                        ev("p", "user2", "search", query="poison tents"), ev("ok", "user2")])
        assert w.dead_letters.reasons() == {"processing_error": 2}
        assert outcomes(w)[("search", "rejected")] == 2
        assert outcomes(w)[("view", "applied")] == 13
        assert sum(st.next_offset for st in w.pipeline.states.values()) \
            == sum(before.values()) + 15
        for st in w.pipeline.states.values():
            assert np.isfinite(st.profiles._unit).all() and np.isfinite(st.profiles._norm).all()
        details = [r.headers["detail"] for r in w.dead_letters.records]
        assert any(b"non-finite" in d for d in details), details

    run(tmp_path, body, encoder=FaultyEncoder(DIM), batch_attempts=2)


def test_a_dlq_that_cannot_be_written_stalls_and_never_skips(tmp_path: Path) -> None:
    """The broker refuses the DLQ write: the batch waits (a gauge says so) and is applied,
    whole, once the DLQ is writable again."""
    dlq = DeadLetters(fail=ConnectionError("broker down"))

    async def body(w: InProcessWorker) -> None:
        records = w.source.records([*users_everywhere(),
                                    ev("bad", "user3", "teleport")])  # unknown_type: a DLQ record
        task = asyncio.create_task(w.pipeline.process(records))
        for _ in range(10_000):  # bounded: the stall shows within a few retries
            if counter(w, "profiles_stalled") == 1 and \
                    counter(w, "profiles_batch_retries_total", kind="dlq") >= 3:
                break
            await asyncio.sleep(0.001)
        assert counter(w, "profiles_stalled") == 1
        assert not task.done()
        assert sum(st.next_offset for st in w.pipeline.states.values()) == 0
        assert outcomes(w) == {}
        dlq.fail = None
        await asyncio.wait_for(task, 10)
        assert counter(w, "profiles_stalled") == 0
        assert outcomes(w)[("view", "applied")] == 12
        assert w.dead_letters.reasons() == {"unknown_type": 1}

    run(tmp_path, body, dlq=dlq)


def test_an_exception_in_apply_stops_the_worker_and_a_restart_applies_the_batch_once(
        tmp_path: Path) -> None:
    """An exception raised while applying (after the checks: a bug) cannot be retried in place
    (part of the batch may have changed the state): the pipeline refuses every later batch and
    snapshot, the Kafka layer stops the worker, and the restart from the last snapshot
    applies the batch exactly once."""
    async def main() -> None:
        s = settings(tmp_path)
        async with InProcessWorker(s, HashingEncoder(DIM), dead_letters=LimitedDLQ()) as w:
            await w.items(ITEMS)
            first = await w.events(users_everywhere()[:4])
            await w.pipeline.snapshot(everything=True)
            original = w.pipeline._apply_bandit

            def broken(applied: Any) -> None:
                raise OverflowError("Python int too large to convert to C long")

            w.pipeline._apply_bandit = broken  # type: ignore[method-assign]
            records = w.source.records(users_everywhere()[4:])
            with pytest.raises(Exception, match="restart"):
                await w.pipeline.process(records)
            w.pipeline._apply_bandit = original  # type: ignore[method-assign]
            with pytest.raises(Exception, match="restart"):
                await w.pipeline.process(w.source.records([ev("later", "user0")]))
            assert await w.pipeline.snapshot(everything=True) == 0
            assert counter(w, "profiles_batch_retries_total", kind="apply") == 1
        async with InProcessWorker(s, HashingEncoder(DIM), dead_letters=LimitedDLQ()) as w2:
            await w2.items(ITEMS)
            w2.source = w.source
            redelivered = [r for r in [*first, *records]
                           if r.offset >= w2.pipeline.states[r.partition].next_offset]
            await w2.pipeline.process(redelivered)
            assert outcomes(w2) == {("view", "applied"): 12}
            assert sum(len(st.profiles) for st in w2.pipeline.states.values()) == 12

    asyncio.run(main())


def test_an_exception_while_resolving_parked_events_marks_the_pipeline_broken(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the fault fuzzer: the apply step of parked events, like a batch's, must never
    leave a half-applied state live (it could be snapshotted, and the next resolve would apply
    the same events again: one view counted as two impressions)."""
    import tempfile

    from stream.core.errors import StateError

    async def main() -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            s = Settings.from_env({}, state_dir=d, partitions=1)
            async with InProcessWorker(s, HashingEncoder(16)) as w:
                await w.items([{"item_id": "i0", "title": "red shoe"}])
                await w.events([{"event_id": "e1", "user_id": "ann", "type": "view",
                                 "ts": 1_700_000_000_000, "item_id": "late"}])
                p = w.pipeline
                orig, calls = p._apply_profiles, {"n": 0}

                def failing(work):  # a bug (or MemoryError) in the apply step, once
                    calls["n"] += 1
                    if calls["n"] == 1:
                        raise RuntimeError("apply phase: boom")
                    return orig(work)

                monkeypatch.setattr(p, "_apply_profiles", failing)
                await w.items([{"item_id": "late", "title": "late stove"}])
                with pytest.raises(StateError, match="broken"):
                    await p.resolve_parked()
                assert p.broken is not None
                assert await p.snapshot(everything=True) == 0  # nothing half-applied persists
                await p.resolve_parked()  # a broken pipeline applies nothing more
                assert p.states[0].arms.as_dict().get("late", (0.0, 0.0))[0] <= 1.0

    asyncio.run(main())
