"""Fixtures of the integration tests only (the broker, dataset and worker ones are in
tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.prom import Prometheus


@pytest.fixture
def start_prometheus(tmp_path):
    """``start_prometheus("127.0.0.1:PORT")``: a real Prometheus scraping that worker with the
    shipped config and rules (:class:`tests.prom.Prometheus`), stopped after the test."""
    started: list[Prometheus] = []

    def start(worker_target: str) -> Prometheus:
        p = Prometheus(tmp_path, worker_target)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop()
