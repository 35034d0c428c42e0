"""stream.worker.faiss_threads: FAISS on the worker's loop thread is single-threaded by default."""

from __future__ import annotations

import threading
from typing import Any

import faiss
import pytest

from stream.core.errors import ConfigError
from stream.settings import Settings
from stream.worker.faiss_threads import set_faiss_threads


def _in_thread(fn: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(30)
    assert not t.is_alive()
    return out[0]


def test_set_faiss_threads_is_per_thread() -> None:
    default = _in_thread(faiss.omp_get_max_threads)

    def one() -> tuple[int, int]:
        set_faiss_threads(1)
        other = _in_thread(faiss.omp_get_max_threads)  # a thread started afterwards
        return faiss.omp_get_max_threads(), other

    mine, other = _in_thread(one)
    assert mine == 1 and other == default

    def keep() -> int:
        set_faiss_threads(0)  # 0: FAISS's default is left alone
        return faiss.omp_get_max_threads()

    assert _in_thread(keep) == default


def test_faiss_threads_setting() -> None:
    assert Settings.from_env({}).faiss_threads == 1
    assert Settings.from_env({"PROFILES_FAISS_THREADS": "0"}).faiss_threads == 0
    with pytest.raises(ConfigError, match="faiss_threads must be >= 0"):
        Settings.from_env({"PROFILES_FAISS_THREADS": "-2"})
