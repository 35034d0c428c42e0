"""Shared fixtures."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stream.settings import Settings


@pytest.fixture(scope="session")
def real_encoder():
    """The bundled all-MiniLM-L6-v2 on CPU, fp32, loaded once per test session."""
    from encoder import TransformerEncoder

    return TransformerEncoder(device="cpu", dtype="fp32")  # auto is bf16 on AVX512_BF16 CPUs


# ---------------------------------------------------------------------------- integration

def pytest_collection_modifyitems(config, items):
    """Tests in tests/integration are integration tests, tests/inprocess in-process tests,
    tests/gpu gpu tests."""
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        elif f"{os.sep}inprocess{os.sep}" in path:
            item.add_marker(pytest.mark.inprocess)
        elif f"{os.sep}gpu{os.sep}" in path:
            item.add_marker(pytest.mark.gpu)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """With CI=true a skipped test outside the gpu/bench markers fails the run."""
    if os.environ.get("CI", "").lower() != "true":
        return
    bad = [r for r in terminalreporter.stats.get("skipped", [])
           if not ({"gpu", "bench"} & set(getattr(r, "keywords", {})))]
    if bad:
        terminalreporter.write_line(f"CI=true: {len(bad)} test(s) skipped outside gpu/bench markers:",
                                    red=True)
        for r in bad:
            terminalreporter.write_line(f"  {r.nodeid}: {r.longrepr}")
        config._ci_bad_skips = len(bad)


def pytest_sessionfinish(session, exitstatus):
    if getattr(session.config, "_ci_bad_skips", 0) and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One embedded Tansu broker per session (each test uses fresh topics and groups)."""
    from stream.kafka.broker import EmbeddedBroker

    b = EmbeddedBroker().start(log_path=str(tmp_path_factory.mktemp("broker") / "broker.log"))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """The generated log of the integration tests: 1,000 users, 500 items, 20,000 events."""
    from stream.data.generate import generate

    ds = generate(users=1000, items=500, events=20000, seed=7)
    paths = ds.write(tmp_path_factory.mktemp("data"))
    return ds, paths


@pytest.fixture(scope="session")
def oracle_vectors(dataset, real_encoder):
    """Item and query embeddings computed in the test process, for the oracle."""
    from stream.core.events import Item

    ds, _ = dataset
    items = [Item(**{k: it.get(k) for k in ("item_id", "title", "category", "brand", "price")})
             for it in ds.items]
    item_vecs = dict(zip([i.item_id for i in items], real_encoder.encode([i.text() for i in items])))
    queries = sorted({e["query"] for e in ds.events if e["type"] == "search"})
    query_vecs = dict(zip(queries, real_encoder.encode(queries))) if queries else {}
    return item_vecs, query_vecs


@pytest.fixture
def topics():
    """Fresh topic names and consumer group for one test."""
    tag = uuid.uuid4().hex[:10]
    return {"events_topic": f"events-{tag}", "items_topic": f"items-{tag}",
            "dlq_topic": f"events.dlq-{tag}", "group_id": f"profiles-{tag}"}


@pytest.fixture
def start_worker(broker, topics, tmp_path):
    """Factory: start a real worker process (fresh topics/group/state dir); all are killed after."""
    from stream.kafka.broker import free_port
    from stream.settings import Settings
    from stream.tools.runner import WorkerProcess

    workers: list[WorkerProcess] = []
    state_dir = tmp_path / "state"

    def start(extra_env: dict[str, str] | None = None, **overrides):
        values = {"bootstrap_servers": broker.bootstrap, "state_dir": str(state_dir),
                  "http_port": free_port(), "session_timeout_s": 6.0,
                  "encoder_dtype": "fp32", **topics, **overrides}  # the oracles are fp32
        settings = Settings.from_env({}, **values)
        w = WorkerProcess(settings, tmp_path / f"worker-{len(workers)}.log",
                          extra_env=dict(extra_env or {})).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.kill()


def total_outcomes(worker) -> int:
    s = worker.stats()
    if s.get("parked"):
        return -1
    return int(sum(v for k, v in s.items() if k.startswith("events_")))


def assert_matches_oracle(worker, events: list[dict], oracle_vectors) -> tuple[float, int]:
    """Every profile the worker serves equals the offline oracle to 1e-5, and every arm's
    counts equal the oracle's groupby; returns (worst profile error, arms checked)."""
    import numpy as np

    from tests.oracle import oracle_bandit, oracle_profiles

    s = worker.settings
    item_vecs, query_vecs = oracle_vectors
    worst = 0.0
    for user, want in oracle_profiles(events, item_vecs, query_vecs, s.event_weight_map(),
                                      s.half_life_ms).items():
        body = worker.json(f"/users/{user}/profile?vector=1")
        assert body["_status"] == 200, (user, body)
        worst = max(worst, float(np.max(np.abs(np.asarray(body["vector"]) - want))))
    assert worst <= 1e-5, worst
    arms = 0
    for arm, (imp, rew) in oracle_bandit(events, s.reward_weight_map()).items():
        if imp or rew:
            body = worker.json(f"/arms/{arm}")
            assert (body["impressions"], body["rewards"]) == (imp, rew), (arm, body)
            arms += 1
    return worst, arms


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def kafka(bootstrap: str, **overrides) -> Settings:
    """Settings for talking to the test broker (everything else at its default)."""
    from stream.settings import Settings

    return Settings.from_env({}, bootstrap_servers=bootstrap, **overrides)


def read_topic(bootstrap: str, topic: str, at_least: int = 0, timeout_s: float = 60) -> list:
    """Every record of ``topic``, read to the Fetch high watermark by the Kafka layer (Tansu's
    ListOffsets "latest" is wrong) and until ``at_least`` records arrived, within a deadline."""
    from stream.kafka.highwater import read_all

    return read_all(kafka(bootstrap), topic, at_least=at_least, timeout_s=timeout_s)
