"""Issue 10, point 9: a model switch by `profiles rebuild --swap` (the state path is a symlink
swapped to ``<state>-<model>``) while a worker on the old model keeps running.  The old worker
must keep writing into the directory it started with; the new worker, started on the swapped
link with the new model, must load the rebuilt state (today it crash-looped on StateError
because the old worker had written old-model snapshots into the new directory)."""

from __future__ import annotations

import asyncio

import pytest

from encoder.fake import HashingEncoder
from stream.settings import Settings
from stream.tools.rebuild import swap
from stream.worker.testing import InProcessWorker

pytestmark = pytest.mark.inprocess

T = 1_700_000_000_000


def ev(i: int, user: str) -> dict:
    return {"event_id": f"e{i}", "user_id": user, "type": "view", "ts": T + i, "item_id": "i1"}


def test_a_worker_on_the_old_model_never_writes_into_the_swapped_directory(tmp_path) -> None:
    old_dir, new_dir, link = tmp_path / "state-old", tmp_path / "state-new", tmp_path / "state"
    old_dir.mkdir()
    link.symlink_to(old_dir.name)
    s = Settings.from_env({}, state_dir=str(link))
    old_model, new_model = HashingEncoder(16), HashingEncoder(24)
    assert old_model.fingerprint != new_model.fingerprint

    async def main() -> None:
        async with InProcessWorker(s, old_model) as old:
            await old.items([{"item_id": "i1", "title": "red shoe"}])
            await old.events([ev(1, "u1")], partition=0)
            await old.pipeline.snapshot(everything=True)
            # `profiles rebuild --swap` for the new model: a fresh directory, the link swapped
            new_dir.mkdir()
            async with InProcessWorker(s.replace(state_dir=str(new_dir)), new_model) as rebuilt:
                await rebuilt.items([{"item_id": "i1", "title": "red shoe"}])
                await rebuilt.events([ev(1, "u1")], partition=0)
                await rebuilt.pipeline.snapshot(everything=True)
            swap(link, new_dir)
            # the old worker keeps running: its next snapshots stay in its own directory
            await old.events([ev(2, "u2")], partition=0)
            await old.pipeline.snapshot(everything=True)
            assert (new_dir / f"{s.events_topic}.model").read_text().strip() == \
                new_model.fingerprint
            assert (old_dir / f"{s.events_topic}.model").read_text().strip() == \
                old_model.fingerprint
        # the rolling restart: a worker with the new model on the swapped link loads the
        # rebuilt state (no StateError) and resumes from its offsets
        async with InProcessWorker(s, new_model) as new:
            assert new.pipeline.profiles.owner("u1") is not None
            assert new.pipeline.profiles.owner("u2") is None  # the old worker's later event
            assert new.pipeline.states[0].next_offset == 1

    asyncio.run(main())
