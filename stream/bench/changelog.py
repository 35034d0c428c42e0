"""What the state changelog costs: ``python -m stream.bench.changelog``.

One real worker (hashing encoder) on the embedded broker (or ``--bootstrap``) ingests a
generated log at a steady rate with the changelog on; then the changelog topic is read back:
bytes and records written, bytes per snapshot, bytes per second of ingest (on Tansu, which
never compacts, the topic grows by that much), the live bytes (what compaction would keep:
every partition's manifest and the blobs it lists) and the time to restore every partition
from Kafka into an empty folder.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from stream.data.generate import generate
from stream.kafka.broker import bootstrap_or_embedded, free_port
from stream.kafka.changelog import KafkaBlobStore, TieredBlobStore, blob_versions
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from stream.tools.runner import WorkerProcess
from stream.worker.blobs import LocalBlobStore
from stream.worker.snapshots import SnapshotStore

__all__ = ["main", "run"]


def _outcomes(w: WorkerProcess) -> int:
    s = w.stats()
    return int(sum(v for k, v in s.items() if k.startswith("events_")))


def run(users: int, events: int, rate: float, bootstrap: str | None, workdir: Path,
        interval_s: float, changelog: bool = True) -> dict[str, Any]:
    bootstrap, broker = bootstrap_or_embedded(bootstrap, str(workdir / "broker.log"))
    try:
        tag = uuid.uuid4().hex[:8]
        s = Settings.from_env({}, bootstrap_servers=bootstrap, events_topic=f"ev-{tag}",
                              items_topic=f"items-{tag}", dlq_topic=f"ev-{tag}.dlq",
                              group_id=f"bench-{tag}", state_dir=str(workdir / "state"),
                              http_port=free_port(), encoder_kind="hashing",
                              snapshot_interval_s=interval_s, changelog=changelog)
        ds = generate(users=users, items=1000, events=events, seed=7)
        paths = ds.write(workdir / "data")
        create_topics(s, {s.events_topic: s.partitions, s.items_topic: 1, s.dlq_topic: 1})
        load_items(paths["items"], s, progress=False)
        w = WorkerProcess(s, workdir / "worker.log").start()
        try:
            w.wait_ready(180)
            t0 = time.monotonic()
            replay(paths["events"], s, rate=rate, progress=False)
            w.wait_for(lambda: _outcomes(w) >= events, 600, "every event applied")
            ingest_s = time.monotonic() - t0
            cpu_s = sum(x.value for x in w.metrics().get("process_cpu_seconds", []))
        finally:
            w.stop()  # SIGTERM: a last snapshot of every partition
        head = {"users": users, "events": events, "rate": rate, "partitions": s.partitions,
                "snapshot_interval_s": interval_s, "changelog": changelog,
                "ingest_s": round(ingest_s, 1), "worker_cpu_s": round(cpu_s, 1)}
        if not changelog:
            return head
        # read the whole changelog back (to the Fetch high watermark), then restore
        scan = KafkaBlobStore(s, keep_bytes=False, namespace="*")
        t1 = time.monotonic()
        scan.names("")
        scan_s = time.monotonic() - t1
        scan.close()
        remote = KafkaBlobStore(s, keep_bytes=False, namespace="*")
        empty = workdir / "empty-host"
        store = SnapshotStore(empty, s.events_topic, TieredBlobStore(LocalBlobStore(empty), remote))
        t2 = time.monotonic()
        restored = {p: (store.read(p) or {}).get("next_offset") for p in range(s.partitions)}
        restore_s = time.monotonic() - t2
        versions = blob_versions(s)
        snapshots = versions.get("manifest", 0) + versions.get("snap", 0)
        live = sum(e.size for p in range(s.partitions) if (m := store.manifest(p))
                   for e in m.entries)
        remote.close()
        return {
            **head, "snapshots": snapshots, "blob_versions": versions, "changelog_records": scan.records_read,
            "changelog_bytes": scan.bytes_read,
            "bytes_per_snapshot": round(scan.bytes_read / max(1, snapshots)),
            "changelog_bytes_per_s_ingest": round(scan.bytes_read / ingest_s),
            "live_bytes": live, "scan_s": round(scan_s, 2), "restore_s": round(restore_s, 2),
            "restored_next_offsets": restored,
        }
    finally:
        if broker is not None:
            broker.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stream.bench.changelog", description=__doc__)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--events", type=int, default=60000)
    ap.add_argument("--rate", type=float, default=1000.0, help="events per second")
    ap.add_argument("--interval", type=float, default=2.0, help="PROFILES_SNAPSHOT_INTERVAL_S")
    ap.add_argument("--no-changelog", action="store_true",
                    help="PROFILES_CHANGELOG=false: the worker's CPU without it")
    ap.add_argument("--bootstrap", default=None, help="a Kafka to use (default: embedded Tansu)")
    a = ap.parse_args(argv)
    if a.users < 1 or a.events < 3 * a.users or a.rate <= 0 or a.interval <= 0:
        print("changelog bench: need users >= 1, events >= 3 x users, rate > 0, interval > 0",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-changelog-") as tmp:
        print(json.dumps(run(a.users, a.events, a.rate, a.bootstrap, Path(tmp), a.interval,
                             changelog=not a.no_changelog)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
