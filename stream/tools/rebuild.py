"""``profiles rebuild``: recompute every profile with another encoder, then swap state atomically.

Vectors of two models never mix: snapshots and the item catalogue carry the encoder's
fingerprint and a worker refuses a snapshot made by another model.  Switching models is
therefore a rebuild: re-encode the catalogue with the new model, re-apply the events topic from
its beginning up to the *Fetch* high watermark of every partition (``stream.kafka.highwater``)
through the same pipeline code the worker runs, and write the snapshots into
a fresh directory ``<state>-<fingerprint>``.  ``--swap`` then points the state path (a symlink)
at it with one atomic ``rename``.  Workers keep serving the old model until they restart with
the new ``PROFILES_ENCODER_PATH``; a restarted worker resumes at the rebuilt snapshots' offsets
and catches up with whatever arrived meanwhile (a rolling restart: serving continues).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from encoder import load_encoder
from stream.core.errors import ConfigError, StateError
from stream.kafka.changelog import changelog_store
from stream.kafka.highwater import read_to_high_watermark
from stream.settings import Settings
from stream.worker.blobs import LocalBlobStore
from stream.worker.pipeline import Pipeline
from stream.worker.ports import Header
from stream.worker.records import Record

__all__ = ["rebuild_state", "run_rebuild", "swap"]

log = logging.getLogger(__name__)


async def rebuild_state(s: Settings, link: Path) -> dict[str, Any]:
    """Build the snapshots of ``s.events_topic`` with ``s``'s encoder into ``<link>-<model>``."""
    enc = load_encoder(s.encoder_path or None, device=s.encoder_device, kind=s.encoder_kind,
                       dtype=s.encoder_dtype)
    out_dir = link.with_name(f"{link.name}-{enc.fingerprint}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise StateError(f"{out_dir} is not empty: remove it to rebuild for model {enc.fingerprint}")
    dead = {"n": 0}

    async def count_dead_letter(key: bytes | None, value: bytes | None,
                                headers: list[Header]) -> None:
        dead["n"] += 1  # already dead-lettered when the live worker first saw them

    # written where the workers read it: through the changelog (PROFILES_CHANGELOG) in the
    # model's namespace, else a worker restoring from Kafka would never see the rebuilt state
    pipe = Pipeline(s.replace(state_dir=str(out_dir)), enc, dead_letters=count_dead_letter,
                    blob_store=lambda folder: changelog_store(s, LocalBlobStore(folder),
                                                              enc.fingerprint))
    pipe.encoder_service.start()
    t0 = time.monotonic()
    try:
        async def add_items(records: list[Record]) -> None:
            await pipe.catalog.add_records(records, pipe.encoder_service)

        items = await read_to_high_watermark(s, s.items_topic, add_items, 2000)

        async def apply(records: list[Record]) -> None:
            for r in records:
                if r.partition not in pipe.profiles:
                    pipe.load_partition(r.partition)
            await pipe.process(records)

        events = await read_to_high_watermark(s, s.events_topic, apply, s.batch_size)
        await pipe.resolve_parked()
        await pipe.expire()
        await pipe.snapshot(everything=True)
    finally:
        await pipe.encoder_service.stop()
        close = getattr(pipe.blobs, "close", None)  # the changelog's clients
        if close is not None:
            await asyncio.get_running_loop().run_in_executor(None, close)
    summary = pipe.summary()
    return {"model": pipe.model, "items": items, "events": events, "state_dir": str(out_dir),
            "offsets": {p: st.next_offset for p, st in sorted(pipe.states.items())},
            "seconds": round(time.monotonic() - t0, 1), "dead_letters_seen": dead["n"], **summary}


def swap(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (a symlink replaced by rename)."""
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} is a real directory: move it aside and make {link} a symlink "
                          f"to it (e.g. mv {link} {link}-old && ln -s {link.name}-old {link})")
    tmp = link.with_name(f".{link.name}.swap-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()))
    os.replace(tmp, link)


def run_rebuild(s: Settings, swap_in: bool) -> dict[str, Any]:
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    link = Path(s.state_dir.rstrip("/"))
    result = asyncio.run(rebuild_state(s, link))
    if swap_in:
        out_dir = Path(result["state_dir"])
        swap(link, out_dir)
        result["swapped"] = f"{link} -> {out_dir.name}"
    return result
