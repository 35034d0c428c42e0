"""A real Prometheus for the integration tests (tests/integration/test_prometheus.py and
test_supervisor.py): the ``start_prometheus`` fixture (tests/integration/conftest.py) starts
:class:`Prometheus`, and the helpers below read the dashboard and rules through its HTTP API.

Debian's ``prometheus`` binary runs in its own process group on a free loopback port with a
config generated from the shipped ``deploy/prometheus/prometheus.yml`` (same jobs and rules;
only the scrape targets and intervals differ, and :func:`prometheus_config` proves nothing else
does) and a temporary TSDB.
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
from typing import Any

import pytest
import yaml

from stream.kafka.broker import free_port
from tests.unit.test_deploy import COMPOSE, PROM_CONFIG, PROM_RULES_DIR, _host_path

#: a test module's mark: skipped where the binary is missing
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not on PATH (Debian/Ubuntu: apt-get install prometheus)")

SCRAPE = "1s"
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval): 20 s
# with the compose datasource's 5 s scrape interval, and a value it takes at a 1 s scrape for
# a dashboard range of a few hours.  A 20 s window evens out a worker's brief stalls.
WINDOW_S = 20.0
GRAFANA_VARS = {"$__rate_interval": f"{WINDOW_S:.0f}s", "$__interval": "5s"}
MALFORMED = ("bad_json", "unknown_type", "missing_field")

Series = list[tuple[dict, float]]


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


def shipped_rules() -> list[dict]:
    """Every alert rule of the shipped rule files."""
    return [r for f in sorted(PROM_RULES_DIR.glob("*.yml"))
            for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


# ---------------------------------------------------------------------------- the process
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

    # ------------------------------------------------------------------------ the HTTP API
    def api(self, path: str, **params) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> Series:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (expr, data)
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def wait_for(self, predicate, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, \
                f"prometheus exited; log:\n{self.log.read_text()[-3000:]}"
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(0.5)

    # ------------------------------------------------------------------------ what tests read
    def wait_scraped(self, after: float | None = None, timeout_s: float = 60.0) -> None:
        """Until the worker's target is up (and, with ``after``, scraped at or after that
        epoch time + 2 s, so a query at ``after`` sees the series)."""
        if after is None:
            self.wait_for(lambda: [v for _, v in self.query('up{job="profiles"}')] == [1.0],
                          timeout_s, "the worker's first successful scrape")
            return
        self.wait_for(lambda: any(v >= after + 2 for _, v in
                                  self.query('timestamp(up{job="profiles"})')),
                      timeout_s, "a scrape after the evaluation time")

    def panels(self, dashboard: dict, at: float) -> dict[tuple[str, int], Series]:
        """Every dashboard target at ``at`` (Grafana's variables as :data:`GRAFANA_VARS`),
        keyed by (panel title, target position); each must have data, every value finite."""
        answers: dict[tuple[str, int], Series] = {}
        for p in dashboard["panels"]:
            for i, t in enumerate(p["targets"]):
                q = t["expr"]
                for var, value in GRAFANA_VARS.items():
                    q = q.replace(var, value)
                result = self.query(q, at)
                assert result, f"panel {p['title']!r}: no data for {q}"
                for labels, v in result:
                    assert math.isfinite(v), f"panel {p['title']!r}: {v} for {labels} from {q}"
                assert (p["title"], i) not in answers, f"two panels titled {p['title']!r}"
                answers[p["title"], i] = result
        return answers

    def wait_rules_evaluated(self, timeout_s: float = 30.0) -> list[dict]:
        """Prometheus's rules once every shipped rule is loaded and has been evaluated."""
        shipped = {r["alert"] for r in shipped_rules()}

        def evaluated():
            rules = [r for g in self.api("rules")["groups"] for r in g["rules"]]
            if {r["name"] for r in rules} == shipped and all(
                    r.get("lastEvaluation", "").startswith("20") for r in rules):
                return rules
            return None

        rules: list[dict] = self.wait_for(evaluated, timeout_s, "every rule to be evaluated")
        return rules


# ---------------------------------------------------------------------------- replay input
def mixed_log(events: list[dict], path: Path, probes: bool = True) -> tuple[Path, Counter]:
    """The log with a malformed record every 100 events (the :data:`MALFORMED` reasons in
    turn) and, with ``probes``, a search with a new query text every 100 (offset by 50), so
    the DLQ and encoder panels have traffic throughout a replay.  Returns the file and what
    was mixed in, by kind."""
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
            elif probes and i % 100 == 50:
                f.write(json.dumps({"event_id": f"probe-{i}", "user_id": e["user_id"], "ts": e["ts"],
                                    "type": "search", "query": f"probe query number {i}"}) + "\n")
                mixed["search"] += 1
    return path, mixed
