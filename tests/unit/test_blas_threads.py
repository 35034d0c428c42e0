"""PROFILES_BLAS_THREADS: the worker's numpy BLAS runs on that many threads (stream.worker.blas_threads)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stream.settings import Settings

_CHILD = """
import json, sys
from stream.settings import Settings
from stream.worker.blas_threads import blas_threads, set_blas_threads
import numpy
set_blas_threads(Settings.from_env().blas_threads)
print(json.dumps(blas_threads()))
"""


def _threads_in_child(env_value: str | None) -> dict[str, int]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROFILES_", "OPENBLAS_", "OMP_"))}
    if env_value is not None:
        env["PROFILES_BLAS_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_is_one_thread_for_numpy_blas() -> None:
    threads = _threads_in_child(None)
    assert threads, "no BLAS library found loaded with numpy"
    assert set(threads.values()) == {1}, threads


def test_zero_leaves_the_library_default() -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: the default is one thread too")
    threads = _threads_in_child("0")
    assert max(threads.values()) > 1, threads


def test_negative_is_refused() -> None:
    with pytest.raises(Exception, match="blas_threads"):
        Settings.from_env(blas_threads=-1)


def test_the_worker_sets_it() -> None:
    """service.run_worker applies the setting next to the FAISS and torch threads."""
    import inspect

    from stream import service

    assert "set_blas_threads(settings.blas_threads)" in inspect.getsource(service.run_worker)
