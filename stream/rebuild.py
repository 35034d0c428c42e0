"""``profiles rebuild``: recompute every profile with another encoder, then swap state atomically.

Vectors of two models never mix: snapshots and the item catalogue carry the encoder's
fingerprint and a worker refuses a snapshot made by another model.  Switching models is
therefore a rebuild: re-encode the catalogue with the new model, re-apply the events topic from
its beginning up to the *Fetch* high watermark of every partition (not ``end_offsets``, which
Tansu gets wrong) through the same pipeline code the worker runs, and write the snapshots into
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

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.errors import ConfigError, StateError
from stream.settings import Settings

log = logging.getLogger(__name__)


async def _read_to_high_watermark(s: Settings, topic: str, on_batch, batch: int) -> int:
    """Read ``topic`` from the beginning to the Fetch high watermark; returns records read."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=s.fetch_max_wait_ms,
                                fetch_max_bytes=s.fetch_max_bytes,
                                **s.kafka_security("aiokafka"))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ConfigError(f"topic {topic!r} does not exist on {s.bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        empty = 0
        while True:
            got = await consumer.getmany(timeout_ms=500, max_records=batch)
            records = [m for msgs in got.values() for m in msgs]
            if records:
                empty = 0
                n += len(records)
                await on_batch(records)
            else:
                empty += 1
            hws = [consumer.highwater(tp) for tp in tps]
            done = all(h is not None for h in hws) and all(
                [await consumer.position(tp) >= h for tp, h in zip(tps, hws)])
            if done or (empty >= 10 and all(h is None for h in hws)):
                return n
    finally:
        await consumer.stop()


async def rebuild_state(s: Settings, link: Path) -> dict:
    """Build the snapshots of ``s.events_topic`` with ``s``'s encoder into ``<link>-<model>``."""
    from encoder import load_encoder
    from stream.pipeline import Pipeline

    enc = load_encoder(s.encoder_path or None, device=s.encoder_device, kind=s.encoder_kind)
    out_dir = link.with_name(f"{link.name}-{enc.fingerprint}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise StateError(f"{out_dir} is not empty: remove it to rebuild for model {enc.fingerprint}")
    pipe = Pipeline(s.replace(state_dir=str(out_dir)), enc)
    dead = {"n": 0}

    async def count_dead_letter(key, value, headers) -> None:
        dead["n"] += 1  # already dead-lettered when the live worker first saw them

    pipe.send_dlq = count_dead_letter
    pipe.encoder_service.start()
    t0 = time.monotonic()
    try:
        async def add_items(records) -> None:
            await pipe.catalog.add_raw([m.value for m in records if m.value is not None],
                                       pipe.encoder_service)
            for m in records:
                pipe.catalog.offsets[m.partition] = m.offset + 1

        items = await _read_to_high_watermark(s, s.items_topic, add_items, 2000)

        async def apply(records) -> None:
            for m in records:
                if m.partition not in pipe.states:
                    pipe.load_partition(m.partition)
            await pipe.process([(m.partition, m.offset, m.timestamp, m.key, m.value, m.headers)
                                for m in records])

        events = await _read_to_high_watermark(s, s.events_topic, apply, s.batch_size)
        await pipe.resolve_parked()
        await pipe.expire()
        await pipe.snapshot(everything=True)
    finally:
        await pipe.encoder_service.stop()
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


def run_rebuild(s: Settings, swap_in: bool) -> dict:
    logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    link = Path(s.state_dir.rstrip("/"))
    result = asyncio.run(rebuild_state(s, link))
    if swap_in:
        out_dir = Path(result["state_dir"])
        swap(link, out_dir)
        result["swapped"] = f"{link} -> {out_dir.name}"
    return result
