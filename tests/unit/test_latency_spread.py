"""The spread of repeated latency runs (``profiles bench pipeline --latency-runs N``,
``profiles demo --once --runs N``): min / median / max, and the bench's summary line."""

from __future__ import annotations

from typing import Any

import pytest

from stream.bench import pipeline as bp
from stream.tools.latency_report import min_median_max


def test_min_median_max_skips_none_and_takes_the_middle_two_of_an_even_count() -> None:
    assert min_median_max([0.3, None, 0.1, 0.2]) == {"min": 0.1, "median": 0.2, "max": 0.3}
    assert min_median_max([4.0, 1.0, 3.0, 2.0]) == {"min": 1.0, "median": 2.5, "max": 4.0}
    assert min_median_max([7]) == {"min": 7.0, "median": 7.0, "max": 7.0}
    assert min_median_max([]) is None and min_median_max([None]) is None


def _run(p99: float | None, cand_p99: float | None = None) -> dict[str, Any]:
    return {"rate": 2400.0, "sent": 48000, "send_seconds": 20.0, "observed": 48000, "p50": 0.1,
            "p90": 0.2, "p99": p99,
            "producer": {"ack_p50_ms": 7, "ack_p99_ms": 20, "max_behind_ms": 50},
            "candidates": None if cand_p99 is None else {"n": 400, "not_found": 0,
                                                         "p50": 0.008, "p99": cand_p99},
            "budget": {"stages": {"broker": {"p50_ms": 1, "p99_ms": 2, "mean_ms": 1}},
                       "parked_applied": 0, "parked_p99_ms": None, "gc": {}}}


def test_the_bench_prints_the_spread_and_how_many_runs_met_the_target(
        capsys: pytest.CaptureFixture) -> None:
    bp._print_latency({"50%": [_run(0.30), _run(0.24), _run(0.45)],
                       "50%+requests": [_run(0.5, 0.09), _run(0.7, 0.06), _run(None, None)],
                       "10%": [_run(0.14)]})
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("[50%, run ") for line in out) == 3
    spread = [line for line in out if " runs (min / median / max)" in line]
    assert spread[0] == ("ingest->index at 50% of P over 3 runs (min / median / max): p50 100 ms "
                         "/ 100 ms / 100 ms, p99 240 ms / 300 ms / 450 ms; p99 <= 250 ms in 1 of 3")
    # a run without a p99 counts as a miss and is left out of the spread
    assert "p99 500 ms / 600 ms / 700 ms; p99 <= 250 ms in 0 of 3" in spread[1]
    assert spread[1].endswith("/candidates p99 60 ms / 75 ms / 90 ms")
    assert len(spread) == 2  # one run of 10 %: no spread line, no "[10%, run" header
    assert not any(line.startswith("[10%") for line in out)
