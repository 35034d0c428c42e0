"""Test-only: a worker process started with this folder on ``PYTHONPATH`` and
``SLOW_FIRST_LOAD_S`` set reads its first partition that many seconds slower, like a changelog
restore of a large partition (tests/integration/test_slow_load.py)."""

from __future__ import annotations

import os
import time

_DELAY = float(os.environ.get("SLOW_FIRST_LOAD_S") or 0)

if _DELAY > 0:
    from stream.worker import pipeline as _pipeline

    _read = _pipeline.Pipeline.read_partition
    _slowed: list[int] = []

    def _slow_read(self, partition):
        if not _slowed:
            _slowed.append(partition)
            print(f"sitecustomize: reading partition {partition} {_DELAY:.0f} s slower",
                  flush=True)
            time.sleep(_DELAY)
        return _read(self, partition)

    _pipeline.Pipeline.read_partition = _slow_read  # type: ignore[method-assign]
