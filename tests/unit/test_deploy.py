"""The deployment files: Dockerfile, docker-compose.yml, Prometheus config/rules, Grafana.

No Docker engine is needed: the files are parsed and cross-checked against the repository
(every mounted or built path exists) and against the worker (every metric a rule or panel
queries is one it exports, every PROFILES_* variable is a setting, every `profiles` command
line parses).  With ``promtool`` on PATH the Prometheus config and rules are also checked
and the main alerts are unit-tested; without it those tests skip.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROM_RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "profiles.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

# Metric families the worker registers (grep of stream/metrics.py), with their types.  The
# exposed sample names follow from the type; test_worker_metrics_constant_is_current keeps
# this list honest against the real registry.
WORKER_METRICS = {
    "profiles_snapshot_bytes": "counter",
    "profiles_events": "counter",
    "profiles_dlq": "counter",
    "profiles_bandit_impressions": "counter",
    "profiles_bandit_rewards": "counter",
    "profiles_parked_events": "gauge",
    "profiles_parked_bytes": "gauge",
    "profiles_ingest_to_index_seconds": "histogram",
    "profiles_stage_seconds": "histogram",
    "profiles_parked_seconds": "histogram",
    "profiles_gc_seconds": "histogram",
    "profiles_batch_size": "histogram",
    "profiles_encoder_seconds": "histogram",
    "profiles_encoder_texts": "counter",
    "profiles_encoder_errors": "counter",
    "profiles_index_vectors": "gauge",
    "profiles_index_info": "gauge",
    "profiles_consumer_lag": "gauge",
    "profiles_next_offset": "gauge",
    "profiles_redelivered": "counter",
    "profiles_offset_gaps": "counter",
    "profiles_batch_retries": "counter",
    "profiles_stalled": "gauge",
    "profiles_agent_crashes": "counter",
    "profiles_snapshots": "counter",
    "profiles_snapshot_seconds": "histogram",
    "profiles_lock_held_seconds": "histogram",
    "profiles_ready": "gauge",
    "profiles_forget": "counter",
    "profiles_bandit_arm_impressions": "gauge",
    "profiles_bandit_arm_rewards": "gauge",
    "profiles_bandit_arm_posterior_mean": "gauge",
    "profiles_bandit_arms": "gauge",
    "profiles_bandit_arms_dropped": "counter",
    "profiles_encoder_cache_evictions": "counter",
    "profiles_catalog_retries": "counter",
    "profiles_catalog_reader_down": "gauge",
    "profiles_catalog_rejected": "counter",
    "profiles_id_cache_evictions": "counter",
    "profiles_dlq_values_dropped": "counter",
    "profiles_expired": "counter",
    "profiles_candidates": "counter",
    "profiles_signals_published": "counter",
    "profiles_signals_received": "counter",
    "profiles_http_bodies_rejected": "counter",
    "profiles_segment_users": "gauge",
    "profiles_interest_users": "gauge",
    # prometheus_client's ProcessCollector
    "process_cpu_seconds": "counter",
    "process_max_fds": "gauge",
    "process_open_fds": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
}
# Series Prometheus makes itself for every target.
SCRAPE_SERIES = {"up"}
PROCESS_SERIES = {"process_resident_memory_bytes"}


def _sample_names(families: dict[str, str]) -> set[str]:
    out: set[str] = set()
    for name, kind in families.items():
        if kind == "counter":
            out.add(name + "_total")
        elif kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            out.add(name)
    return out


EXPORTED = _sample_names(WORKER_METRICS) | SCRAPE_SERIES | PROCESS_SERIES

_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                    "and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels, keywords removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # exponent / unit of a number literal
        if e[m.end():].lstrip().startswith("("):
            continue  # a function call
        if m.group().lower() in _PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


# ---------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def prom_config() -> dict:
    return yaml.safe_load(PROM_CONFIG.read_text())


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    out = []
    for path in sorted(PROM_RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _mounts(service: dict) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume entry, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v.get("type", "volume"), v.get("source", ""), v["target"]))
            continue
        parts = v.split(":")
        if len(parts) == 1:
            out.append(("volume", "", parts[0]))
            continue
        src, target = parts[0], parts[1]
        kind = "bind" if src.startswith((".", "/", "~")) else "volume"
        out.append((kind, src, target))
    return out


def _host_path(container_path: str, services: dict, service: str) -> Path | None:
    """The repository path a container path of a service is bind-mounted from."""
    cp = PurePosixPath(container_path)
    for kind, src, target in _mounts(services[service]):
        if kind != "bind":
            continue
        try:
            rel = cp.relative_to(PurePosixPath(target))
        except ValueError:
            continue
        return (ROOT / src / rel).resolve() if str(rel) != "." else (ROOT / src).resolve()
    return None


def _prom_exprs(rules, dashboard) -> list[tuple[str, str]]:
    exprs = [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules]
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            exprs.append((f"panel {panel['title']!r}", t.get("expr", "")))
    return exprs


# ---------------------------------------------------------------------------- compose
def test_compose_parses_and_has_the_services(services):
    assert {"kafka", "topics", "worker", "prometheus", "grafana", "replay"} <= set(services)


def test_every_build_context_and_dockerfile_exists(services):
    builds = {name: s["build"] for name, s in services.items() if "build" in s}
    assert "worker" in builds
    for name, build in builds.items():
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (context / dockerfile).is_file(), f"{name}: {dockerfile} missing"


def test_every_bind_mount_exists_and_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for kind, src, target in _mounts(service):
            if kind == "bind":
                path = (ROOT / src).resolve()
                assert path.exists(), f"{name}: mounts {src} -> {target}, which does not exist"
                assert ROOT in path.parents or path == ROOT, f"{name}: {src} is outside the repo"
            elif src:
                assert src in declared, f"{name}: named volume {src!r} not declared"


def test_every_referenced_file_in_compose_exists(services):
    # env_file / configs / secrets would also need their files.
    for name, service in services.items():
        env_files = service.get("env_file", [])
        for f in [env_files] if isinstance(env_files, str) else env_files:
            f = f if isinstance(f, str) else f["path"]
            assert (ROOT / f).is_file(), f"{name}: env_file {f} missing"


def test_kafka_is_kraft_with_a_healthcheck(services):
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.0"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert ":19092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert str(env["KAFKA_CONTROLLER_QUORUM_VOTERS"]).startswith(f"{env['KAFKA_NODE_ID']}@")
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1
    assert "kafka-topics.sh --bootstrap-server localhost:9092 --list" in " ".join(
        kafka["healthcheck"]["test"])


def test_topics_match_the_worker_defaults(services):
    from stream.settings import Settings

    s = Settings()
    script = " ".join(services["topics"]["command"])
    created = {t: int(p) for t, p in re.findall(r"--topic (\S+) --partitions (\d+)", script)}
    assert created == {s.events_topic: s.partitions, s.items_topic: 1, s.dlq_topic: 1}


def test_worker_environment_names_real_settings(services):
    from stream.settings import Settings

    for name in ("worker", "replay"):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        known = {Settings.env_name(f) for f in Settings.__dataclass_fields__}
        unknown = {k for k in env if k.startswith("PROFILES_")} - known
        assert not unknown, f"{name}: unknown settings {unknown}"
        Settings.from_env(env)  # values are valid too
    env = services["worker"]["environment"]
    assert env["PROFILES_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["PROFILES_HTTP_HOST"] == "0.0.0.0"
    state_mount = [m for m in _mounts(services["worker"]) if m[2] == env["PROFILES_STATE_DIR"]]
    assert state_mount and state_mount[0][0] == "volume", "state dir must be on a named volume"
    assert any(str(p).endswith("8080") for p in services["worker"]["ports"])


def test_worker_waits_for_kafka_and_topics(services):
    dep = services["worker"]["depends_on"]
    assert dep["kafka"]["condition"] == "service_healthy"
    assert dep["topics"]["condition"] == "service_completed_successfully"


def test_replay_is_a_demo_profile_and_its_commands_parse(services):
    from stream.cli import build_parser

    replay = services["replay"]
    assert replay["profiles"] == ["demo"]
    lines = [ln.strip() for ln in " ".join(replay["command"]).splitlines()]
    commands = [shlex.split(ln) for ln in lines if ln.startswith("profiles ")]
    assert [c[1] for c in commands] == ["generate", "items", "replay"]
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv[1:])  # exits (SystemExit) on a bad command line


def test_prometheus_mounts_the_repo_config(services):
    assert _host_path("/etc/prometheus/prometheus.yml", services, "prometheus") == PROM_CONFIG.resolve()


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(services):
    prov = _host_path("/etc/grafana/provisioning", services, "grafana")
    assert prov == GRAFANA_PROVISIONING.resolve()
    sources = [d for f in sorted((prov / "datasources").glob("*.y*ml"))
               for d in yaml.safe_load(f.read_text())["datasources"]]
    assert [(d["uid"], d["type"], d["url"]) for d in sources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")]
    providers = [p for f in sorted((prov / "dashboards").glob("*.y*ml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers
    for p in providers:
        assert _host_path(p["options"]["path"], services, "grafana") == DASHBOARD.parent.resolve()


# ---------------------------------------------------------------------------- Dockerfile
def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert "download.pytorch.org/whl/cpu" in text
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["profiles"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["worker"\]$', text, re.MULTILINE)
    assert re.search(r"^EXPOSE 8080$", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


def test_dockerignore_drops_local_state_but_keeps_the_package():
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for must in (".git", ".venv", "state", "data"):
        assert must in patterns, f".dockerignore should exclude {must}"
    for needed in ("pyproject.toml", "README.md", "stream", "encoder", "index"):
        hit = [p for p in patterns if fnmatch.fnmatch(needed, p.rstrip("/"))]
        assert not hit, f".dockerignore excludes {needed} (needed by pip install .): {hit}"


# ---------------------------------------------------------------------------- Prometheus
def test_prometheus_scrapes_the_worker(prom_config, services):
    jobs = {j["job_name"]: j for j in prom_config["scrape_configs"]}
    job = jobs["profiles"]
    assert job["scrape_interval"] == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert ["worker:8080"] in [sc["targets"] for sc in job["static_configs"]]
    # the rule_files glob finds the repo's rules through the compose mount
    found = []
    for pattern in prom_config["rule_files"]:
        host = _host_path(str(PurePosixPath(pattern).parent), services, "prometheus")
        assert host is not None, f"rule_files {pattern} is not under a mounted folder"
        found += sorted(host.glob(PurePosixPath(pattern).name))
    assert (PROM_RULES_DIR / "profiles.yml").resolve() in found


def test_rules_are_alerts_with_severity_and_summary(rules):
    assert len(rules) >= 4
    for r in rules:
        assert r.get("alert") and r.get("expr")
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (le) (rate(profiles_ingest_to_index_seconds_bucket'
            '{job="profiles"}[5m]))) > 1e3 and on() up{job="profiles"} == 0')
    assert metric_names(expr) == {"profiles_ingest_to_index_seconds_bucket", "up"}


def test_every_queried_metric_is_exported(rules, dashboard):
    exprs = _prom_exprs(rules, dashboard)
    used = set()
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - EXPORTED
        assert not unknown, f"{where}: {sorted(unknown)} not exported by the worker ({expr!r})"
        used |= names
    # up is only ever asked about the worker's job
    for where, expr in exprs:
        for m in re.finditer(r"\bup\b(\{[^}]*\})?", expr):
            assert m.group(1) and 'job="profiles"' in m.group(1), f"{where}: bare up in {expr!r}"
    # the brief's core series all appear somewhere
    assert {"profiles_ingest_to_index_seconds_bucket", "profiles_consumer_lag",
            "profiles_dlq_total", "profiles_encoder_errors_total", "up",
            "profiles_ready"} <= used


def test_worker_metrics_constant_is_current():
    from stream.worker.metrics import Metrics

    m = Metrics(list)
    live = {fam.name: fam.type for fam in m.registry.collect()}
    assert live == WORKER_METRICS


def test_worker_exports_process_metrics():
    from prometheus_client import generate_latest

    from stream.worker.metrics import Metrics

    text = generate_latest(Metrics(list).registry).decode()
    for name in PROCESS_SERIES:
        assert re.search(rf"^{name}\b", text, re.MULTILINE), name


# ---------------------------------------------------------------------------- Grafana
def test_dashboard_panels_all_query_prometheus(dashboard):
    assert dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        targets = p.get("targets") or []
        assert any(t.get("expr") for t in targets), f"panel {p['title']!r} has no expr"
        for ds in [p.get("datasource")] + [t.get("datasource") for t in targets]:
            if ds is not None:
                assert ds.get("uid") == "prometheus", f"panel {p['title']!r}: datasource {ds}"


def test_dashboard_has_the_agreed_panels(dashboard):
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needle in ("sum by (type, outcome) (rate(profiles_events_total[$__rate_interval]))",
                   "profiles_ingest_to_index_seconds_bucket", "profiles_consumer_lag",
                   "profiles_dlq_total", "profiles_index_vectors",
                   "profiles_bandit_impressions_total", "profiles_bandit_rewards_total",
                   "profiles_batch_size", "profiles_encoder_seconds_bucket",
                   "profiles_encoder_errors_total", "process_resident_memory_bytes",
                   "process_cpu_seconds_total",
                   # the latency budget, stacked (issue 14)
                   "sum by (stage) (rate(profiles_stage_seconds_sum[$__rate_interval])) / "
                   "sum by (stage) (rate(profiles_stage_seconds_count[$__rate_interval]))"):
        assert needle in exprs, needle
    for q in ("0.5", "0.95", "0.99"):
        assert (f"histogram_quantile({q}, sum by (le) "
                "(rate(profiles_ingest_to_index_seconds_bucket[$__rate_interval])))") in exprs, q


# Grafana variables a panel may use, and what they stand for in PromQL (for checks only).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def padding_problems(expr: str) -> list[str]:
    """Why a panel query could return data without the worker having produced it.

    Forbidden: ``or`` (as in ``or vector(0)``), ``vector(...)``, ``absent(...)``, any
    sub-expression with no metric selector (a bare number or constant), and metrics the worker
    does not export.
    """
    e = expr
    for var, value in GRAFANA_VARIABLES.items():
        e = e.replace(var, value)
    problems = []
    if re.search(r"\bor\b", re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)):
        problems.append("uses `or` (padding)")
    for fn in ("vector", "absent", "absent_over_time", "scalar", "time"):
        if re.search(rf"\b{fn}\s*\(", e):
            problems.append(f"uses {fn}()")
    names = metric_names(e)
    if not names:
        problems.append("selects no metric (a constant)")
    if names - EXPORTED:
        problems.append(f"selects {sorted(names - EXPORTED)}, not exported by the worker")
    # every operand of a binary operator at the top level must select a metric
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(e):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0 and ch in "+-*/%^" and not (ch == "-" and e[i + 1:i + 2].isdigit()
                                                 and e[:i].rstrip().endswith(("(", ","))):
            parts.append(e[start:i])
            start = i + 1
    parts.append(e[start:])
    for part in parts:
        if part.strip() and not metric_names(part):
            problems.append(f"operand {part.strip()!r} is a constant")
    return problems


def test_padding_check_catches_padding():
    assert padding_problems("sum(rate(profiles_dlq_total[$__rate_interval]))") == []
    assert padding_problems("sum(rate(profiles_dlq_total[5m])) or vector(0)")
    assert padding_problems("sum(rate(profiles_dlq_total[5m])) + 0")
    assert padding_problems("vector(1)")
    assert padding_problems("42")
    assert padding_problems("sum(up{job=\"profiles\"}) or on() absent(up{job=\"profiles\"})")
    assert padding_problems("sum(nonexistent_metric)")


def test_dashboard_queries_are_not_padded(dashboard):
    for p in dashboard["panels"]:
        for t in p["targets"]:
            assert not padding_problems(t["expr"]), (p["title"], t["expr"], padding_problems(t["expr"]))


def test_operations_doc_covers_every_panel_and_alert(dashboard, rules):
    # docs/operations.md (or the README, once merged) documents each query and alert verbatim.
    text = "\n".join(f.read_text() for f in (ROOT / "README.md", ROOT / "docs" / "operations.md")
                     if f.is_file())
    for p in dashboard["panels"]:
        assert p["title"] in text, f"panel {p['title']!r} not documented"
        for t in p["targets"]:
            assert t["expr"] in text, f"query of panel {p['title']!r} not documented: {t['expr']}"
    for r in rules:
        assert r["alert"] in text, f"alert {r['alert']} not documented"


def test_gpu_override_changes_only_the_worker(services):
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    assert set(gpu) == {"worker"}
    w = gpu["worker"]
    assert "download.pytorch.org/whl/cu" in w["build"]["args"]["TORCH_INDEX"]
    assert "TORCH_INDEX" in DOCKERFILE.read_text()
    assert w["environment"]["PROFILES_ENCODER_DEVICE"] == "cuda"
    devices = w["deploy"]["resources"]["reservations"]["devices"]
    assert devices and all("gpu" in d["capabilities"] for d in devices)
    assert w["image"] != services["worker"]["image"]


# ---------------------------------------------------------------------------- promtool
promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool not on PATH (Debian/Ubuntu: apt-get install prometheus)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          check=False)


@promtool
def test_promtool_check_config(prom_config, tmp_path):
    # Point rule_files at the repo folder so `check config` loads and checks the rules too.
    cfg = dict(prom_config, rule_files=[str(PROM_RULES_DIR / "*.yml")])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    res = _promtool("check", "config", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rules found" in res.stdout + res.stderr
    res = _promtool("check", "config", "--syntax-only", str(PROM_CONFIG))
    assert res.returncode == 0, res.stdout + res.stderr


@promtool
def test_promtool_check_rules():
    files = sorted(str(p) for p in PROM_RULES_DIR.glob("*.yml"))
    res = _promtool("check", "rules", *files)
    assert res.returncode == 0, res.stdout + res.stderr


PROM_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "profiles_test.yml"


@promtool
def test_promtool_alert_unit_tests():
    res = _promtool("test", "rules", str(PROM_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_every_alert_is_unit_tested_firing_and_silent(rules):
    spec = yaml.safe_load(PROM_TESTS.read_text())
    rule_files = [(PROM_TESTS.parent / f).resolve() for f in spec["rule_files"]]
    assert rule_files == sorted(p.resolve() for p in PROM_RULES_DIR.glob("*.yml"))
    fires, silent = set(), set()
    for case in spec["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t["exp_alerts"] else silent).add(t["alertname"])
    names = {r["alert"] for r in rules}
    assert names <= fires, f"never shown firing: {sorted(names - fires)}"
    assert names <= silent, f"never shown silent: {sorted(names - silent)}"
