"""``profiles bench scale`` at tiny sizes: one JSON object with the issue's keys, plausible
values, and one-line errors for bad arguments (the recovery run, on a real broker, is in
tests/integration/test_bench_scale.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

KEYS = {"item_index_kind": str, "user_index_kind": str, "bytes_per_user": float,
        "bytes_per_user_all_features": float, "item_recall_at_20": float,
        "item_search_p99_ms": float, "user_recall_at_10_after_churn": float,
        "rate_ratio_large_vs_small": float, "snapshot_bytes_per_s": int, "cpu_s_per_s": float}


def _bench(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", "bench", "scale", *argv],
                          capture_output=True, text=True, timeout=timeout)


def test_a_tiny_run_prints_one_json_object_with_every_figure() -> None:
    p = _bench("--users", "600", "--items", "500", "--json", "--no-recovery",
               "--steady-seconds", "1", "--churn", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    r = json.loads(lines[0])
    for key, kind in KEYS.items():
        assert isinstance(r[key], (int, float) if kind is float else kind), (key, r[key])
    # --no-recovery: no real worker, so no recovery time and no HTTP latencies
    assert r["recovery"] is None
    assert r["recovery_s"] is r["candidates_p99_ms"] is r["similar_p99_ms"] is None
    assert r["item_index_kind"] == "Flat" and r["user_index_kind"] == "Flat"  # below 20,000
    assert r["item_index_probes"] == 0 and r["user_index_probes"] == 0  # exact: no lists
    assert 0.0 < r["bytes_per_user"] < 1e6
    assert r["bytes_per_user_all_features"] > 0
    for key in ("item_recall_at_20", "user_recall_at_10_after_churn"):
        assert 0.9 <= r[key] <= 1.0  # exact search at this size (compact vectors: near 1)
    assert r["rate_ratio_large_vs_small"] > 0
    assert r["memory_sizes"] == [60, 600] and r["rate_sizes"] == [60, 600]
    large = r["runs"]["base_large"]
    assert large["state_users"] == 600 and large["dead_letters"] == {}
    churn = large["churn"]
    # the index holds exactly the live users after updates, forgets and new users
    assert churn["live_users"] == churn["state_users"] == churn["indexed"]
    assert churn["tombstones"] > 0
    steady = large["steady"]
    assert steady["item_search_n"] > 0 and steady["events"] >= 500
    assert r["runs"]["all_large"]["state_users"] == 600
    parts = r["bytes_per_user_by_part"]
    assert set(parts) == {"users_index", "dedupe", "user_stats", "signals", "interests",
                          "profiles", "freed_total"}
    assert parts["freed_total"] > 0 and parts["users_index"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--users", "5", "--items", "10", "--no-recovery"], "--users must be >= 10"),
    (["--users", "100", "--items", "10", "--dim", "64"], "use --dim 384 or --no-recovery"),
])
def test_bad_arguments_are_one_line(argv: list[str], message: str) -> None:
    p = _bench(*argv, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert message in p.stderr and p.stderr.startswith("profiles: error:")


def test_a_non_number_is_refused_by_the_parser() -> None:
    p = _bench("--users", "many", "--items", "10", timeout=60)
    assert p.returncode == 2 and "--users: expected a int, got 'many'" in p.stderr
