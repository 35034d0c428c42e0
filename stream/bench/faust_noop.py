"""Faust agents for ``profiles bench pipeline`` (stages F and F0), run as a child process::

    python -m stream.bench.faust_noop --mode ours|default --topic T --group G --n N \\
        --result FILE [--datadir DIR] [--web-port P]

The broker (and every other setting) comes from the ``PROFILES_*`` environment, as for the
worker.  ``ours`` (stage F) uses the worker's faust settings (``stream.kafka.app.faust_app``:
raw serializers, ``take_events`` with the worker's batch size and wait, the same session
timeout and buffer sizes) and only decodes each value with ``orjson.loads``.  ``default``
(stage F0) is faust's defaults (json values, 60 s session timeout, ...) with only what it needs
to connect, and an ``async for value in stream`` agent that does nothing.  Both time from the
first message received to the Nth, so the group join is not timed, and write a JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import orjson

from stream.kafka.app import faust_app, plain_faust_app, run_app
from stream.settings import Settings


class _Clock:
    def __init__(self, mode: str, n: int, result: str) -> None:
        self.mode, self.n, self.result = mode, n, result
        self.count = 0
        self.t_first: float | None = None
        self.n_first = 0
        self.done = False

    def seen(self, n: int) -> None:
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.n_first = now, n
        self.count += n
        if self.count >= self.n and not self.done:
            self.done = True
            out = {"mode": self.mode, "count": self.count, "n_first": self.n_first,
                   "seconds": now - self.t_first, "pid": os.getpid()}
            tmp = self.result + ".tmp"
            with open(tmp, "w") as f:
                json.dump(out, f)
            os.replace(tmp, self.result)


def build(args: argparse.Namespace, s: Settings) -> Any:
    """The faust app of ``args.mode`` with its one agent."""
    clock = _Clock(args.mode, args.n, args.result)
    datadir = args.datadir or None
    if args.mode == "ours":
        app = faust_app(s, args.group, **({"datadir": datadir} if datadir else {}))
        topic = app.topic(args.topic, key_type=bytes, value_type=bytes, partitions=s.partitions)

        @app.agent(topic, name="bench-decode", concurrency=1)
        async def decode(stream: Any) -> None:
            loads = orjson.loads
            async for batch in stream.take_events(s.batch_size, within=s.batch_max_wait_s):
                for e in batch:
                    loads(e.message.value)
                clock.seen(len(batch))

        return app
    # faust defaults; only the broker (to connect), a free web port and a scratch data dir
    app = plain_faust_app(s, args.group, web_port=args.web_port,
                          **({"datadir": datadir} if datadir else {}))
    topic = app.topic(args.topic)

    @app.agent(topic)
    async def noop(stream: Any) -> None:
        async for _value in stream:
            clock.seen(1)

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stream.bench.faust_noop")
    p.add_argument("--mode", choices=("ours", "default"), required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--datadir", default="")
    p.add_argument("--web-port", type=int, default=6066)
    args = p.parse_args(argv)
    run_app(build(args, Settings.from_env()), "WARNING")


if __name__ == "__main__":
    main()
