"""``profiles worker --processes N`` without a broker: the supervisor and its HTTP front over
stand-in children (tests/unit/supervisor_child.py), and the pure pieces (metrics merge, stats
sum, URLs, the process count).  The real worker under a supervisor, on the real broker:
tests/integration/test_supervisor.py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream.serve.front import Front, aggregate_stats, label_sample, merge_expositions
from stream.settings import Settings
from stream.worker.metrics import Metrics, SupervisorMetrics
from stream.worker.supervisor import Supervisor, child_url, local_url, process_count

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

CHILD = Path(__file__).with_name("supervisor_child.py")


# ---------------------------------------------------------------------------- pure pieces
def test_label_sample_adds_the_label_first():
    assert label_sample('a_total{x="1"} 2.0', "0") == 'a_total{process="0",x="1"} 2.0'
    assert label_sample("a 2.0", "1") == 'a{process="1"} 2.0'
    assert label_sample("a{} 2.0", "1") == 'a{process="1"} 2.0'
    assert label_sample('a{x="{ }"} 1', 'q"\\') == 'a{process="q\\"\\\\",x="{ }"} 1'


def _worker_exposition(observe: list[float], events: int) -> str:
    m = Metrics(list)
    for v in observe:
        m.batch_size.observe(v)
    m.encoder_texts.labels("query").inc(events)
    m.ready.set(1)
    return generate_latest(m.registry).decode()


def test_merged_exposition_keeps_every_series_once_with_its_process():
    a = _worker_exposition([3, 700], 5)
    b = _worker_exposition([30], 7)
    sup = SupervisorMetrics()
    sup.restarts.labels("0").inc()
    sup.process_up.labels("0").set(1)
    merged = merge_expositions([("0", a), ("1", b), (None, generate_latest(sup.registry).decode()),
                                ("supervisor", generate_latest(sup.own).decode())])
    fams = {f.name: f for f in text_string_to_metric_families(merged)}
    # each family once (the parser would split a family that appears twice)
    names = [f.name for f in text_string_to_metric_families(merged)]
    assert len(names) == len(set(names))
    series = [(s.name, tuple(sorted(s.labels.items())))
              for f in text_string_to_metric_families(merged) for s in f.samples]
    assert len(series) == len(set(series))  # no series twice (Prometheus drops such a scrape)
    # the oracle: the sum over the children's own expositions
    def total(text: str, family: str, sample: str) -> float:
        return sum(s.value for f in text_string_to_metric_families(text) if f.name == family
                   for s in f.samples if s.name == sample)

    for family, sample in (("profiles_batch_size", "profiles_batch_size_count"),
                           ("profiles_batch_size", "profiles_batch_size_sum"),
                           ("profiles_encoder_texts", "profiles_encoder_texts_total")):
        got = {s.labels["process"]: s.value for s in fams[family].samples if s.name == sample}
        assert got == {"0": total(a, family, sample), "1": total(b, family, sample)}
    buckets = [s for s in fams["profiles_batch_size"].samples if s.name.endswith("_bucket")]
    assert {s.labels["process"] for s in buckets} == {"0", "1"}
    assert fams["profiles_batch_size"].type == "histogram"
    assert {s.labels["process"] for s in fams["process_resident_memory_bytes"].samples} == \
        {"0", "1", "supervisor"}
    assert [(s.labels, s.value) for s in fams["profiles_supervisor_restarts"].samples
            if s.name.endswith("_total")] == [({"process": "0"}, 1.0)]
    assert [s.labels for s in fams["profiles_ready"].samples] == [{"process": "0"}, {"process": "1"}]


def test_no_worker_metric_uses_the_process_label():
    """The front adds ``process``: a worker series with its own would clash."""
    m = Metrics(list)
    m.catalog_rejected.labels("bad_json").inc()
    for fam in m.registry.collect():
        for s in fam.samples:
            assert "process" not in s.labels, (fam.name, s)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH")
def test_promtool_accepts_the_merged_exposition(tmp_path):
    merged = merge_expositions([("0", _worker_exposition([1], 1)),
                                ("1", _worker_exposition([2], 2))])
    res = subprocess.run(["promtool", "check", "metrics"], input=merged, text=True,
                         capture_output=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr  # format and lint both clean


def test_aggregate_stats_sums_counts_and_joins_partitions():
    a = {"events_applied": 10, "users": 3, "items_index": 500, "ready": True,
         "partitions": {"0": 5, "2": 7}, "ranker": {"kind": "linear"},
         "signals": {"published": 2, "received": 4, "pending": 0, "newest_ts": 100}}
    b = {"events_applied": 5, "events_duplicate": 1, "users": 2, "items_index": 500,
         "ready": False, "partitions": {"1": 9}, "ranker": {"kind": "linear"},
         "signals": {"published": 1, "received": 4, "pending": 1, "newest_ts": 90}}
    out = aggregate_stats([a, b])
    assert out == {"events_applied": 15, "events_duplicate": 1, "users": 5, "items_index": 500,
                   "ready": False, "partitions": {"0": 5, "2": 7, "1": 9},
                   "ranker": {"kind": "linear"},
                   "signals": {"published": 3, "received": 8, "pending": 1, "newest_ts": 100}}
    assert aggregate_stats([])["ready"] is False


def test_urls_and_process_count(monkeypatch):
    s = Settings.from_env({})
    assert local_url("0.0.0.0", 9) == "http://127.0.0.1:9"
    assert local_url("::", 9) == "http://[::1]:9"
    assert child_url(s, 9001) == "http://127.0.0.1:9001"
    assert child_url(s.replace(http_host="0.0.0.0", advertised_url="http://worker:8080"),
                     9001) == "http://worker:9001"
    assert child_url(s.replace(advertised_url="https://[fd00::1]:8080/x"), 7) == \
        "https://[fd00::1]:7"
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert process_count(s) == s.partitions == 4  # one per core, at most the partitions
    assert process_count(s.replace(partitions=32)) == 16
    assert process_count(s.replace(processes=3)) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert process_count(s) == 1


def test_processes_is_validated_in_one_line(capsys):
    from stream.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["worker", "--processes", "-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "profiles: error: processes must be in 0..1024 (0: one per core), got -1"


def test_one_process_is_the_plain_worker_in_this_process(monkeypatch):
    import stream.service as service

    calls = []
    monkeypatch.setattr(service, "run_worker", lambda s: calls.append(s))
    monkeypatch.setattr("stream.serve.front.run_supervised",
                        lambda s, n: pytest.fail("supervised with --processes 1"))
    s = Settings.from_env({}, processes=1)
    assert service.run(s) == 0 and calls == [s]


def test_spawned_workers_default_to_one_process(monkeypatch, tmp_path):
    """The demo, the benchmark and the tests run WorkerProcess: one process unless asked."""
    from stream.tools import runner

    envs = []

    class FakePopen:
        def __init__(self, argv, env, **kw):
            envs.append(env)
            self.pid = 0

    monkeypatch.setattr(runner.subprocess, "Popen", FakePopen)
    runner.WorkerProcess(Settings.from_env({}), tmp_path / "a.log").start()
    runner.WorkerProcess(Settings.from_env({}, processes=2), tmp_path / "b.log").start()
    assert [e["PROFILES_PROCESSES"] for e in envs] == ["1", "2"]


# ---------------------------------------------------------------------------- live
async def _until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def _run(settings: Settings, n: int, mode: str, body, **kw) -> Supervisor:
    sup = Supervisor(settings, n, command=[sys.executable, str(CHILD), mode],
                     backoff_s=(0.05, 0.2), **kw)
    front = Front(sup)
    runner = front.runner()
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await sup.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await body(sup, f"http://127.0.0.1:{port}", http)
    finally:
        await sup.stop()
        await runner.cleanup()
        await front.close()
    return sup


def test_a_killed_child_is_restarted_and_sigterm_stops_all():
    s = Settings.from_env({}, api_token="tok", partitions=4)

    async def body(sup: Supervisor, url: str, http: aiohttp.ClientSession) -> None:
        async def ready():
            try:
                async with http.get(url + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await _until(ready, 30, "both children ready")
        # the API is forwarded, body, query and token included, to each child in turn
        seen = set()
        for i in range(4):
            async with http.post(url + f"/users/a%2Fb/x?k={i}", data=b'{"q": 1}',
                                 headers={"Authorization": "Bearer tok"}) as r:
                echo = await r.json()
            assert (echo["method"], echo["path"], echo["body"], echo["auth"]) == \
                ("POST", f"/users/a%2Fb/x?k={i}", '{"q": 1}', "Bearer tok")
            assert echo["processes"] == "1"
            seen.add(echo["pid"])
        assert seen == {c.pid for c in sup.children}
        advertised = {c.slot: f"http://127.0.0.1:{c.port}" for c in sup.children}
        assert {d["process"]: d["url"] for d in sup.describe()} == advertised
        # /stats: summed, and the token is still the children's to check
        async with http.get(url + "/stats") as r:
            assert r.status == 401
        async with http.get(url + "/stats", headers={"Authorization": "Bearer tok"}) as r:
            stats = await r.json()
        assert stats["events_applied"] == 20 and stats["items_index"] == 7 and stats["ready"]
        # /metrics: both children's series, labelled, and the parent's own
        async with http.get(url + "/metrics") as r:
            text = await r.text()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert {s.labels["process"]: s.value for s in fams["fake_pid"].samples} == \
            {str(c.slot): float(c.pid) for c in sup.children}
        assert {s.labels["process"]: s.value for s in fams["profiles_supervisor_process_up"].samples} \
            == {"0": 1.0, "1": 1.0}

        victim = sup.children[0]
        old_pid = victim.pid
        os.kill(old_pid, signal.SIGKILL)

        async def restarted():
            return victim.restarts == 1 and victim.running() and await ready()

        await _until(restarted, 30, "the killed child to be restarted")
        assert victim.pid != old_pid and victim.exits == [-signal.SIGKILL]
        async with http.get(url + "/metrics") as r:
            text = await r.text()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert [(s.labels, s.value) for s in fams["profiles_supervisor_restarts"].samples
                if s.name.endswith("_total")] == [({"process": "0"}, 1.0), ({"process": "1"}, 0.0)]
        assert {s.labels["process"]: s.value for s in fams["fake_pid"].samples}["0"] == victim.pid

    sup = asyncio.run(_run(s, 2, "ok", body))
    assert [c.exits[-1] for c in sup.children] == [0, 0]  # SIGTERM: clean exits
    assert sup.exit_code == 0 and not sup.running()


def test_a_child_ignoring_sigterm_is_killed_with_its_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_GRANDCHILD_FILE", str(tmp_path / "grandchild"))
    grandchild: list[int] = []

    async def body(sup: Supervisor, url: str, http: aiohttp.ClientSession) -> None:
        async def started():
            return (tmp_path / "grandchild").is_file() and \
                (tmp_path / "grandchild").read_text().strip()

        grandchild.append(int(await _until(started, 30, "the grandchild")))

    t0 = time.monotonic()
    sup = asyncio.run(_run(Settings.from_env({}), 1, "stubborn", body, stop_deadline_s=0.5))
    assert time.monotonic() - t0 < 20
    assert sup.children[0].exits == [-signal.SIGKILL] and sup.exit_code == 1
    deadline = time.monotonic() + 10
    while not _gone(grandchild[0]):
        assert time.monotonic() < deadline, "the grandchild survived its group's SIGKILL"
        time.sleep(0.05)


def test_a_configuration_error_stops_instead_of_restarting():
    async def body(sup: Supervisor, url: str, http: aiohttp.ClientSession) -> None:
        await asyncio.wait_for(sup.wait_stopped(), 30)

    sup = asyncio.run(_run(Settings.from_env({}), 2, "config", body))
    assert sup.exit_code == 2
    assert all(c.restarts == 0 for c in sup.children)


def test_the_front_answers_503_with_no_child_running():
    async def body(sup: Supervisor, url: str, http: aiohttp.ClientSession) -> None:
        await asyncio.wait_for(sup.wait_stopped(), 30)
        async with http.get(url + "/users/u1/profile") as r:
            assert r.status == 503
            assert json.loads(await r.text()) == {"error": "no worker process running"}
        async with http.get(url + "/readyz") as r:
            assert r.status == 503

    asyncio.run(_run(Settings.from_env({}), 1, "config", body))
