"""Faust agents for ``profiles bench pipeline`` (stages F and F0), run as a child process.

Configured by environment variables (the benchmark sets them):

``BENCH_MODE``      ``ours`` (stage F) or ``default`` (stage F0)
``BENCH_TOPIC``     topic to read (pre-filled with exactly ``BENCH_N`` events)
``BENCH_GROUP``     consumer group / app id (fresh per run)
``BENCH_N``         how many events to count
``BENCH_RESULT``    file the agent writes its JSON result to once ``BENCH_N`` are counted
``BENCH_DATADIR``   faust's data directory
``BENCH_WEB_PORT``  faust's web port (``default`` mode keeps faust's web server on)

``ours`` uses the worker's faust settings (raw serializers, ``take_events`` with the worker's
batch size and wait, the same session timeout and buffer sizes as ``stream/app.py``) and only
decodes each value with ``orjson.loads``.  ``default`` is faust's defaults (json values, 60 s
session timeout, ...) with only what it needs to connect, and a ``async for value in stream``
agent that does nothing.  Both time from the first message received to the Nth, so the group
join is not timed.

    python -m stream.bench_faust_noop
"""

from __future__ import annotations

import json
import os
import time

import faust
import orjson

from stream.settings import Settings

MODE = os.environ.get("BENCH_MODE", "ours")
TOPIC = os.environ["BENCH_TOPIC"]
GROUP = os.environ["BENCH_GROUP"]
N = int(os.environ["BENCH_N"])
RESULT = os.environ["BENCH_RESULT"]
DATADIR = os.environ["BENCH_DATADIR"]
WEB_PORT = int(os.environ.get("BENCH_WEB_PORT", "6066"))


class _Clock:
    def __init__(self) -> None:
        self.count = 0
        self.t_first: float | None = None
        self.n_first = 0
        self.done = False

    def seen(self, n: int) -> None:
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.n_first = now, n
        self.count += n
        if self.count >= N and not self.done:
            self.done = True
            out = {"mode": MODE, "count": self.count, "n_first": self.n_first,
                   "seconds": now - self.t_first, "pid": os.getpid()}
            tmp = RESULT + ".tmp"
            with open(tmp, "w") as f:
                json.dump(out, f)
            os.replace(tmp, RESULT)


clock = _Clock()

if MODE == "ours":
    from stream.app import faust_app

    s = Settings.from_env()
    app = faust_app(s, GROUP, datadir=DATADIR)  # the worker's faust settings, shared code
    topic = app.topic(TOPIC, key_type=bytes, value_type=bytes, partitions=s.partitions)

    @app.agent(topic, name="bench-decode", concurrency=1)
    async def decode(stream):
        loads = orjson.loads
        async for batch in stream.take_events(s.batch_size, within=s.batch_max_wait_s):
            for e in batch:
                loads(e.message.value)
            clock.seen(len(batch))

elif MODE == "default":
    bootstrap = os.environ["PROFILES_BOOTSTRAP_SERVERS"]
    # Faust defaults; only the broker (to connect), a free web port and a scratch data dir.
    app = faust.App(GROUP, broker=[f"kafka://{b.strip()}" for b in bootstrap.split(",")],
                    web_port=WEB_PORT, datadir=DATADIR)
    topic = app.topic(TOPIC)

    @app.agent(topic)
    async def noop(stream):
        async for _value in stream:
            clock.seen(1)

else:
    raise SystemExit(f"BENCH_MODE must be 'ours' or 'default', got {MODE!r}")


if __name__ == "__main__":
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
