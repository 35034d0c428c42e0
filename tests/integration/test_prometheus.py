"""A real Prometheus scraping a real worker during a replay; every dashboard query answers.

Debian's ``prometheus`` binary runs on a free loopback port with a config generated from the
shipped ``deploy/prometheus/prometheus.yml`` (same jobs and rules; only the scrape targets and
intervals differ, and the test proves nothing else does) and a temporary TSDB.  One worker
(real encoder) applies the first 12,000 events of the generated log replayed at a fixed
300 events/s (~41 s), with a few malformed records (three DLQ reasons) and searches with new
query texts (encoder calls) mixed in.  Then, through the Prometheus HTTP API, at a time inside
the replay window whose 20 s rate window lies inside it too:

- every target of every dashboard panel returns at least one finite value;
- the events/s panel agrees within 20 % with the replayed count divided by the elapsed time;
- the freshness histogram has counts, and the other panels' values are plausible (partitions,
  DLQ reasons, index sizes, impressions per event);
- every shipped rule loaded and evaluates without error.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from stream.kafka.broker import free_port
from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from tests.conftest import kafka, total_outcomes
from tests.unit.test_deploy import (
    COMPOSE,
    DASHBOARD,
    PROM_CONFIG,
    PROM_RULES_DIR,
    _host_path,
    padding_problems,
)

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="prometheus not on PATH (Debian/Ubuntu: apt-get install prometheus)"),
]

# Published rate and how much of the generated log: 12,000 events (+ 240 mixed in) in ~41 s.
# The rate leaves the worker headroom on a busy 2-core machine (measured: it keeps up with
# ~450 events/s at a load of 10), so what it applies in the window is what was published.
RATE = 300.0
N_EVENTS = 12_000
SCRAPE = "1s"
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval): 20 s
# with the compose datasource's 5 s scrape interval, and a value it takes at a 1 s scrape for
# a dashboard range of a few hours.  A 20 s window evens out a worker's brief stalls.
WINDOW_S = 20.0
GRAFANA_VARS = {"$__rate_interval": f"{WINDOW_S:.0f}s", "$__interval": "5s"}


# ---------------------------------------------------------------------------- config
def prometheus_config(worker_target: str, prom_port: int) -> dict:
    """The shipped config with only the scrape targets and intervals changed."""
    shipped = yaml.safe_load(PROM_CONFIG.read_text())
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    cfg = copy.deepcopy(shipped)
    cfg["global"]["scrape_interval"] = SCRAPE
    cfg["global"]["evaluation_interval"] = SCRAPE
    # the rule files the container sees, at the host path compose mounts them from
    rule_files = []
    for pattern in shipped["rule_files"]:
        folder = _host_path(str(Path(pattern).parent), services, "prometheus")
        assert folder is not None, f"rule_files {pattern} is not mounted by compose"
        rule_files.append(str(folder / Path(pattern).name))
    cfg["rule_files"] = rule_files
    targets = {"profiles": worker_target, "prometheus": f"127.0.0.1:{prom_port}"}
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if "scrape_interval" in job:
            job["scrape_interval"] = SCRAPE
        if "scrape_timeout" in job:
            job["scrape_timeout"] = SCRAPE
    # nothing else differs from what compose runs
    def strip(c: dict) -> dict:
        c = copy.deepcopy(c)
        c.pop("rule_files")
        for k in ("scrape_interval", "evaluation_interval"):
            c["global"].pop(k, None)
        for job in c["scrape_configs"]:
            for k in ("static_configs", "scrape_interval", "scrape_timeout"):
                job.pop(k, None)
        return c

    assert strip(cfg) == strip(shipped)
    assert sorted(Path(p).resolve() for f in rule_files for p in Path(f).parent.glob(Path(f).name)) \
        == sorted(p.resolve() for p in PROM_RULES_DIR.glob("*.yml"))
    return cfg


class Prometheus:
    """``prometheus`` in its own process group on a free loopback port."""

    def __init__(self, tmp: Path, worker_target: str) -> None:
        self.tmp = tmp
        self.worker_target = worker_target
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = tmp / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> Prometheus:
        for _attempt in range(3):  # a free port can be taken before prometheus binds it
            self.port = free_port()
            cfg = self.tmp / f"prometheus-{self.port}.yml"
            cfg.write_text(yaml.safe_dump(prometheus_config(self.worker_target, self.port)))
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    ["prometheus", f"--config.file={cfg}",
                     f"--storage.tsdb.path={self.tmp / f'tsdb-{self.port}'}",
                     f"--web.listen-address=127.0.0.1:{self.port}",
                     "--storage.tsdb.retention.time=1h", "--log.level=info"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    pass
                time.sleep(0.2)
            self.stop()
            if "address already in use" not in self.log.read_text():
                break
        raise AssertionError(f"prometheus did not become ready; log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[tuple[dict, float]]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (expr, data)
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def wait_for(self, predicate, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"prometheus exited; log:\n{self.log.read_text()[-3000:]}"
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(0.5)


@pytest.fixture
def prometheus_factory(tmp_path):
    started: list[Prometheus] = []

    def start(worker_target: str) -> Prometheus:
        p = Prometheus(tmp_path, worker_target)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop()


# ---------------------------------------------------------------------------- replay input
MALFORMED = ("bad_json", "unknown_type", "missing_field")


def replay_file(events: list[dict], path: Path) -> tuple[Path, Counter]:
    """The generated log with a malformed record every 100 events and a search with a new
    query text every 100 (offset by 50), so the DLQ and encoder panels have traffic
    throughout the replay.  Returns the file and what was mixed in."""
    mixed: Counter = Counter()
    with path.open("w") as f:
        for i, e in enumerate(events):
            f.write(json.dumps(e) + "\n")
            if i % 100 == 0:
                kind = MALFORMED[(i // 100) % len(MALFORMED)]
                base = {"event_id": f"bad-{i}", "user_id": e["user_id"], "ts": e["ts"]}
                if kind == "bad_json":
                    line = f'{{"event_id": "bad-{i}", "user_id": '  # cut short
                elif kind == "unknown_type":
                    line = json.dumps({**base, "type": "teleport", "item_id": "i00001"})
                else:
                    line = json.dumps({**base, "type": "view"})  # no item_id
                f.write(line + "\n")
                mixed[kind] += 1
            elif i % 100 == 50:
                f.write(json.dumps({"event_id": f"probe-{i}", "user_id": e["user_id"], "ts": e["ts"],
                                    "type": "search", "query": f"probe query number {i}"}) + "\n")
                mixed["search"] += 1
    return path, mixed


def timeline(prom: Prometheus, t0: float) -> list[tuple[float, int, int]]:
    """(seconds since t0, events with an outcome, total lag) once a second until now."""
    def series(expr):
        data = prom.api("query_range", query=expr, start=f"{t0:.3f}", end=f"{time.time():.3f}",
                        step="1")
        return {round(float(t) - t0): int(float(v)) for t, v in data["result"][0]["values"]} \
            if data["result"] else {}

    applied, lag = series("sum(profiles_events_total)"), series("sum(profiles_consumer_lag)")
    return [(t, applied.get(t, -1), lag.get(t, -1)) for t in sorted(applied)]


def _values(result: list[tuple[dict, float]]) -> list[float]:
    return [v for _, v in result]


# ---------------------------------------------------------------------------- the test
def test_every_panel_answers_with_plausible_values(broker, topics, dataset, start_worker,
                                                   prometheus_factory, tmp_path):
    ds, paths = dataset
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    for title, expr in targets:  # nothing padded with `or vector(0)` or constants
        assert not padding_problems(expr), (title, expr, padding_problems(expr))

    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: Settings().partitions,
                                     topics["items_topic"]: 1, topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)
    worker = start_worker(segments_k=4, segments_every_s=2.0)  # "Users per customer segment"
    worker.wait_ready(300)
    prom = prometheus_factory(f"127.0.0.1:{worker.settings.http_port}")
    prom.wait_for(lambda: _values(prom.query('up{job="profiles"}')) == [1.0], 60,
                  "the worker's first successful scrape")

    events = ds.events[:N_EVENTS]
    log, mixed = replay_file(events, tmp_path / "events.jsonl")
    sent = replay(log, kafka(broker.bootstrap), topic=topics["events_topic"], rate=RATE,
                  progress=False)
    t_end = time.time()
    n_records = len(events) + sum(mixed.values())
    assert sent.sent == n_records and sent.failed == 0, sent
    t_start = t_end - sent.seconds
    replayed_rate = sent.sent / sent.seconds
    assert sent.seconds > WINDOW_S + 12, sent  # the window below lies inside the replay
    worker.wait_for(lambda: total_outcomes(worker) == n_records, 300,
                    "every record to reach a final outcome")

    # An instant in the replay window whose rate window starts well after the replay began
    # and ends before it finished (the worker applies within a second).
    at = t_end - 2.0
    assert at - WINDOW_S > t_start + 10.0
    prom.wait_for(lambda: any(v >= at + 2 for v in _values(prom.query('timestamp(up{job="profiles"})'))),
                  30, "a scrape after the evaluation time")

    answers = {}
    for title, expr in targets:
        q = expr
        for var, value in GRAFANA_VARS.items():
            q = q.replace(var, value)
        result = prom.query(q, at)
        assert result, f"panel {title!r}: no data for {q}"
        for labels, v in result:
            assert math.isfinite(v), f"panel {title!r}: {v} for {labels} from {q}"
        answers[expr] = result

    def panel(title: str, i: int = 0) -> list[tuple[dict, float]]:
        [p] = [p for p in dashboard["panels"] if p["title"] == title]
        return answers[p["targets"][i]["expr"]]

    # events/s: the replayed count over the elapsed time, within 20 %
    events_rate = sum(_values(panel("Events/s by type and outcome")))
    print(f"events/s panel {events_rate:.1f}, replayed {replayed_rate:.1f} "
          f"({sent.sent} records in {sent.seconds:.1f} s)")
    assert abs(events_rate / replayed_rate - 1) <= 0.20, (
        f"events/s panel {events_rate:.0f} vs replayed {replayed_rate:.0f}; applied and lag "
        f"per second of the replay: {timeline(prom, t_start)}")
    outcomes = {(m["type"], m["outcome"]) for m, _ in panel("Events/s by type and outcome")}
    assert ("view", "applied") in outcomes and ("unknown", "rejected") in outcomes, outcomes

    # freshness: the histogram has counts; quantiles are ordered and below its top bucket
    count = prom.query("sum(profiles_ingest_to_index_seconds_count)", at)
    assert count and count[0][1] > 0, count
    p50, p95, p99 = (panel("Ingest → index latency (p50 / p95 / p99)", i)[0][1] for i in range(3))
    assert 0 < p50 <= p95 <= p99 < 30, (p50, p95, p99)

    # the other panels' values make sense for this replay
    lag = panel("Consumer lag per partition")
    assert {m["partition"] for m, _ in lag} == {str(p) for p in range(Settings().partitions)}
    assert all(v >= 0 for _, v in lag)
    assert {m["reason"] for m, _ in panel("DLQ rate by reason")} == set(MALFORMED)
    assert sum(_values(panel("DLQ rate by reason"))) > 0
    imp_rate = panel("Bandit impressions and rewards per second")[0][1]
    views = sum(e["type"] == "view" for e in events) / n_records
    assert abs(imp_rate / events_rate - views) < 0.1, (imp_rate, events_rate, views)
    ctr = panel("Bandit CTR (all arms)")[0][1]
    assert 0 < ctr < 1, ctr
    assert {m["kind"] for m, v in panel("Encoder texts/s and errors/s") if v > 0} == {"query"}
    assert _values(panel("Encoder texts/s and errors/s", 1)) == [0.0]
    assert 1 <= panel("Micro-batch size")[0][1] <= worker.settings.batch_size
    assert panel("Process memory (RSS)")[0][1] > 50e6
    assert panel("Process CPU")[0][1] > 0
    assert _values(panel("Worker up")) == [1.0] and _values(panel("Ready")) == [1.0]

    users = len({e["user_id"] for e in events})

    def sizes():
        got = {m["index"]: v for m, v in prom.query("sum by (instance, index) (profiles_index_vectors)")}
        return got if got == {"items": float(len(ds.items)), "users": float(users)} else None

    prom.wait_for(sizes, 30, "index sizes of the whole log")

    # every shipped rule is loaded and evaluates against the live series without error
    shipped = {r["alert"] for f in PROM_RULES_DIR.glob("*.yml")
               for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]}

    def rules_evaluated():
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        if {r["name"] for r in rules} == shipped and all(r.get("lastEvaluation", "").startswith("20")
                                                          for r in rules):
            return rules
        return None

    rules = prom.wait_for(rules_evaluated, 30, "every rule to be evaluated")
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert "ProfilesWorkerDown" not in firing and "ProfilesEncoderErrors" not in firing, firing
