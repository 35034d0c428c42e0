"""Issue 10, points 11 and 12 without a worker: where the HTTP API may bind, what compose
sets, the dead-letter topic's configuration, the bandit arm bound, and a /metrics arm merge
that does not walk every arm on the event loop."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream.core.bandit import ArmStats, BanditParams
from stream.core.errors import ConfigError
from stream.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- point 12: bind
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.9", "localhost", "::1", "[::1]"])
def test_loopback_binds_need_no_token(host) -> None:
    from stream.serve.http import check_exposure

    check_exposure(Settings(http_host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.1.2.3", "worker", "fe80::1"])
def test_a_non_loopback_bind_needs_a_token_or_an_explicit_opt_in(host) -> None:
    from stream.serve.http import check_exposure

    with pytest.raises(ConfigError) as err:
        check_exposure(Settings(http_host=host))
    msg = str(err.value)
    assert "\n" not in msg and "PROFILES_API_TOKEN" in msg and "PROFILES_ALLOW_OPEN_API" in msg
    check_exposure(Settings(http_host=host, api_token="a-token"))
    check_exposure(Settings(http_host=host, allow_open_api=True))


def test_allow_open_api_reads_booleans_and_rejects_the_rest() -> None:
    from stream.cli import _settings, build_parser

    for raw, want in [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False),
                      ("", False), ("off", False)]:
        assert Settings.from_env({"PROFILES_ALLOW_OPEN_API": raw}).allow_open_api is want, raw
    with pytest.raises(ConfigError, match="PROFILES_ALLOW_OPEN_API"):
        Settings.from_env({"PROFILES_ALLOW_OPEN_API": "maybe"})
    args = build_parser().parse_args(["worker", "--allow-open-api", "false"])
    assert _settings(args).allow_open_api is False  # a flag's "false" is not a truthy string
    args = build_parser().parse_args(["worker", "--allow-open-api", "true"])
    assert _settings(args).allow_open_api is True


class _Refused(Exception):
    pass


def test_the_worker_refuses_an_open_api_before_loading_anything(monkeypatch, capsys) -> None:
    import stream.service
    from stream.cli import main

    def no_encoder(*a: Any, **kw: Any) -> Any:
        raise _Refused("the encoder must not be loaded")

    monkeypatch.setattr(stream.service, "load_encoder", no_encoder)
    # what run_worker does before loading the encoder must not change this process's logging
    monkeypatch.setattr(stream.service, "quiet_client_logs", lambda: None)
    monkeypatch.setattr(stream.service.logging, "basicConfig", lambda **kw: None)
    for name in list(Settings.__dataclass_fields__):
        monkeypatch.delenv(Settings.env_name(name), raising=False)
    with pytest.raises(ConfigError, match="PROFILES_API_TOKEN"):
        stream.service.run_worker(Settings(http_host="0.0.0.0"))
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "--http-host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("profiles: error:")
    with pytest.raises(_Refused):  # with the opt-in it goes on to load the encoder
        stream.service.run_worker(Settings(http_host="0.0.0.0", allow_open_api=True))


def _interpolate(value: str, env: dict[str, str]) -> str:
    """docker compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (KeyError for the last)."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        v = env.get(name, "")
        if op == ":?" and not v:
            raise KeyError(f"{name}: {arg}")
        return v or (arg if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}", sub, value)


def test_compose_serves_the_api_on_all_interfaces_only_with_a_token() -> None:
    for path in (ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"):
        worker = yaml.safe_load(path.read_text())["services"]["worker"]
        assert "PROFILES_ALLOW_OPEN_API" not in worker.get("environment", {}), path
    env = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"][
        "environment"]
    env = {k: str(v) for k, v in env.items()}
    with pytest.raises(KeyError, match="PROFILES_API_TOKEN"):  # compose stops with a message
        {k: _interpolate(v, {}) for k, v in env.items()}
    resolved = {k: _interpolate(v, {"PROFILES_API_TOKEN": "x" * 32}) for k, v in env.items()}
    s = Settings.from_env(resolved)
    assert s.http_host == "0.0.0.0" and s.api_token.reveal() == "x" * 32
    from stream.serve.http import check_exposure

    check_exposure(s)


# ---------------------------------------------------------------------------- point 12: DLQ
class _FakeAdmin:
    calls: list[dict[str, Any]] = []

    def __init__(self, **kw: Any) -> None:
        pass

    def list_topics(self) -> list[str]:
        return []

    def create_topics(self, topics: dict[str, Any], raise_errors: bool = False) -> dict[str, Any]:
        _FakeAdmin.calls.append(topics)
        return {"topics": []}

    def wait_for_topics(self, topics: list[str], timeout_ms: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_dead_letter_topic_is_created_compacted(monkeypatch) -> None:
    """Erasure tombstones DLQ records, which only compaction removes: every path that creates
    the DLQ topic asks for ``cleanup.policy=compact,delete`` (the test broker does not
    compact, so the request itself is what is tested)."""
    import stream.kafka.clients as clients

    monkeypatch.setattr(clients, "_client_class", lambda kind: _FakeAdmin)
    _FakeAdmin.calls = []
    s = Settings(dlq_topic="my.dlq")
    clients.create_topics(s, {s.events_topic: 4, s.dlq_topic: 1, "other": 1})
    clients.create_topics(s, {s.dlq_topic: 1}, configs={s.dlq_topic: {"retention.ms": "1000"}})
    first, second = _FakeAdmin.calls
    assert first["my.dlq"]["configs"] == {"cleanup.policy": "compact,delete"}
    assert "configs" not in first[s.events_topic] and "configs" not in first["other"]
    assert second["my.dlq"]["configs"] == {"cleanup.policy": "compact,delete",
                                           "retention.ms": "1000"}
    compose = " ".join(yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"]["topics"]["command"])
    assert re.search(r"--topic events\.dlq .*--config cleanup\.policy=compact,delete", compose)


# ---------------------------------------------------------------------------- point 11: arms
def test_arm_tables_are_bounded_new_arms_beyond_are_counted_and_ignored() -> None:
    p = BanditParams(max_arms=3)
    events = ["a", "b", "c", "d", "a", "e", "d", "b"]
    types = ["view", "click", "view", "view", "click", "view", "view", "view"]
    s = ArmStats(p).update(events, types)
    assert s.arms() == ["a", "b", "c"] and s.dropped == 3
    assert s.as_dict() == {"a": (1.0, 1.0), "b": (1.0, 1.0), "c": (1.0, 0.0)}
    assert s.totals() == (3.0, 2.0)
    one = ArmStats(p)  # the same whatever the batch boundaries
    for a, t in zip(events, types):
        one.update([a], [t])
    assert one.as_dict() == s.as_dict() and one.dropped == s.dropped
    r = ArmStats.from_state(s.state(), p)
    assert r.as_dict() == s.as_dict() and r.dropped == 3
    legacy = {k: v for k, v in s.state().items() if k != "dropped"}
    assert ArmStats.from_state(legacy, p).dropped == 0  # snapshots written before the bound
    other = ArmStats(p).update(["x", "y", "z"], ["view"] * 3)
    merged = ArmStats.merged([s, other], p)  # merges and peers' partials are not bounded
    assert len(merged) == 6 and merged.dropped == 0
    # the per-position table is bounded too, and its drops are counted
    c = ArmStats(BanditParams(max_arms=2, context="position")).update(
        ["a", "a", "a", "b"], ["view"] * 4, contexts=[1, 2, 3, 1])
    assert c.arms() == ["a", "b"] and c.contextual is not None and len(c.contextual) == 2
    assert c.contextual.arms() == ["a@1", "a@2"] and c.counts("a") == (3.0, 0.0)
    assert (c.dropped, c.contextual.dropped, c.dropped_total()) == (0, 2, 2)
    with pytest.raises(ValueError, match="max_arms"):
        BanditParams(max_arms=0)


def test_the_bound_is_a_setting() -> None:
    assert Settings().bandit_max_arms == 100_000
    assert Settings.from_env({"PROFILES_BANDIT_MAX_ARMS": "7"}).bandit_params().max_arms == 7
    with pytest.raises(ConfigError, match="bandit_max_arms"):
        Settings(bandit_max_arms=0)


class _St:
    def __init__(self, arms: ArmStats, partition: int = 0) -> None:
        self.arms = arms
        self.partition = partition


def _collect(parts: list[ArmStats], collector: Any) -> tuple[dict[str, tuple[float, float, float]],
                                                             float]:
    reg = CollectorRegistry()
    reg.register(collector)
    got: dict[str, list[float]] = {}
    for m in reg.collect():
        for smp in m.samples:
            if smp.name.startswith("profiles_bandit_arm_"):
                got.setdefault(smp.labels["arm"], [0.0, 0.0, 0.0])[
                    ["profiles_bandit_arm_impressions", "profiles_bandit_arm_rewards",
                     "profiles_bandit_arm_posterior_mean"].index(smp.name)] = smp.value
    return ({a: (v[0], v[1], v[2]) for a, v in got.items()},
            reg.get_sample_value("profiles_bandit_arms") or 0.0)


def _oracle(parts: list[ArmStats], top_n: int) -> tuple[dict[str, tuple[float, float, float]],
                                                        int]:
    m = ArmStats.merged(parts, parts[0].params)
    rows = sorted(m.as_dict().items(), key=lambda kv: -kv[1][0])[:top_n]
    out = {}
    for arm, (imp, rew) in rows:
        a, b = m.posterior(arm)
        out[arm] = (imp, rew, a / (a + b))
    return out, len(m)


@pytest.mark.parametrize("half_life", [None, 3_600_000.0])
def test_the_top_arms_collector_equals_a_full_merge_as_partitions_change(half_life) -> None:
    from stream.worker.metrics import BanditArmsCollector

    rng = np.random.default_rng(3)
    p = BanditParams(half_life_ms=half_life)

    def part(names: list[str], t0: float) -> ArmStats:
        s = ArmStats(p)
        arms = list(rng.choice(names, size=400))
        types = list(rng.choice(["view", "view", "click"], size=400))
        s.update(arms, types, ts=list(t0 + np.sort(rng.uniform(0, 7_200_000, size=400))))
        return s

    names = [f"a{i}" for i in range(150)]
    parts = [part(names[:100], 0.0), part(names[50:], 1e6), part(names[::3], 5e6)]
    live = list(parts)
    collector = BanditArmsCollector(lambda: [_St(x) for x in live], top_n=7)
    for step in range(4):
        got, n = _collect(live, collector)
        want, n_want = _oracle(live, 7)
        assert n == n_want and len(got) == 7, step
        cut = min(v[0] for v in want.values())  # ties at the cut may go either way
        assert {a for a, v in want.items() if v[0] > cut} <= set(got), step
        full = _oracle(live, 1000)[0]
        for arm, values in got.items():
            assert values == pytest.approx(full[arm], rel=1e-9), (step, arm)
            assert values[0] >= cut, (step, arm)
        if step == 0:  # new arms and counts in a partition
            live[0].update(["new1", "a3", "a3"], ["view", "view", "click"],
                           ts=[8e6, 8e6, 8e6])
        elif step == 1:  # a partition is revoked
            live.pop(1)
        elif step == 2:  # ... and comes back restored from its snapshot (a new object)
            live.append(ArmStats.from_state(parts[1].state(), p))
    empty = CollectorRegistry()
    empty.register(BanditArmsCollector(lambda: [], top_n=5))
    assert empty.get_sample_value("profiles_bandit_arms") == 0


def test_a_metrics_scrape_does_not_walk_every_arm() -> None:
    """200,000 arms in each of 4 partitions: after the first scrape (which indexes the arm
    names once) a scrape costs numpy work only: well under the 0.2 s the full merge took."""
    from stream.worker.metrics import BanditArmsCollector

    p = BanditParams()
    names = [f"item-{i:07d}" for i in range(200_000)]
    rng = np.random.default_rng(0)
    parts = [ArmStats(p).add(names, rng.integers(1, 1000, size=len(names)).astype(float),
                             np.zeros(len(names))) for _ in range(4)]
    collector = BanditArmsCollector(lambda: [_St(x, i) for i, x in enumerate(parts)], top_n=20)
    reg = CollectorRegistry()
    reg.register(collector)
    reg.get_sample_value("profiles_bandit_arms")  # indexes the names once
    times = []
    for i in range(3):
        parts[i].update([f"fresh-{i}", names[5]], ["view", "view"])
        t0 = time.perf_counter()
        assert reg.get_sample_value("profiles_bandit_arms") == 200_000 + i + 1
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.05, times
