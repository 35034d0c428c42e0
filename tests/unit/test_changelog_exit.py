"""The changelog store's producer is stopped when the store is dropped or the process exits
without closing it (``profiles bench scale``'s builder drops its state, then exits: aiokafka
warned "Unclosed AIOKafkaProducer" and "Task was destroyed but it is pending")."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    import stream.kafka.changelog as cl
    from stream.settings import Settings

    class FakeProducer:  # aiokafka's AIOKafkaProducer, as far as the store uses it
        async def start(self):
            pass

        async def stop(self):
            print("producer stopped", flush=True)

    cl.build = lambda kind, s, **kw: FakeProducer()
    store = cl.KafkaBlobStore(Settings())
    store._topic_ready = True  # no broker here: the topic is taken as created
    store._producer_()
    if sys.argv[1] == "close":
        store.close()
    elif sys.argv[1] == "drop":
        del store
        import gc
        gc.collect()
    print("returning", flush=True)
""")


def _run(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[:-1]


def test_a_store_never_closed_stops_its_producer_at_exit() -> None:
    assert _run("exit") == ["returning", "producer stopped"]


def test_a_closed_store_stops_its_producer_once() -> None:
    assert _run("close") == ["producer stopped", "returning"]


def test_a_dropped_store_stops_its_producer() -> None:
    assert _run("drop") == ["producer stopped", "returning"]
