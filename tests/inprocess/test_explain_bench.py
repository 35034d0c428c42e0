"""What ``/candidates?explain=1`` costs (a benchmark, not run by default)::

    pytest -q -s -m bench tests/inprocess/test_explain_bench.py

One in-process worker (hashing encoder of dimension 384, no Kafka) holds a generated data set
(2,000 users, 5,000 items, 60,000 events); for 300 users it times ``Queries.candidates(user,
k=20)`` without and with ``explain``, interleaved, in this process's CPU time (``process_time``:
other jobs on the machine slow it less than wall time), and prints the median and p90 CPU
milliseconds per request of each and the ratio of the medians.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from encoder.fake import HashingEncoder
from stream.data.generate import generate
from stream.serve.queries import Queries
from stream.settings import Settings
from stream.worker.testing import InProcessWorker

pytestmark = pytest.mark.bench


def test_explain_cost(tmp_path) -> None:
    ds = generate(users=2000, items=5000, events=60000, seed=7)
    times: dict[str, list[float]] = {"off": [], "on": []}

    async def main() -> None:
        s = Settings.from_env({}, state_dir=str(tmp_path / "state"))
        async with InProcessWorker(s, HashingEncoder(384)) as w:
            await w.items(ds.items)
            for i in range(0, len(ds.events), 2000):
                await w.events(ds.events[i:i + 2000])
            q = Queries(w.pipeline)
            for u in sorted({e["user_id"] for e in ds.events})[:300]:
                for mode in ("off", "on"):
                    t0 = time.process_time()
                    body = await q.candidates(u, 20, explain=mode == "on")
                    times[mode].append((time.process_time() - t0) * 1000.0)
                    assert body["candidates"]

    asyncio.run(main())
    med = {}
    for mode, ms in times.items():
        ms.sort()
        med[mode] = statistics.median(ms)
        print(f"\nexplain {mode:3}: median {med[mode]:.2f} ms, p90 "
              f"{ms[int(0.9 * (len(ms) - 1))]:.2f} ms CPU per /candidates (k=20, {len(ms)} users)")
    print(f"explain on / off, medians: {med['on'] / med['off']:.2f}x")
