"""``profiles demo --once --runs N``: N demos in a row, one JSON summary with each run's and the
min / median / max of their quantiles (issue 14: "run it 5 times and print min/median/max")."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest

from stream.cli import main
from stream.tools import demo


def _run(p50: float | None, p99: float | None, applied: int = 100, parked: int = 0
         ) -> dict[str, Any]:
    return {"events_applied": applied, "events_rejected": 1, "events_duplicate": 0,
            "events_parked": parked, "ingest_to_index_p50_ms": p50,
            "ingest_to_index_p99_ms": p99, "elapsed_s": 20.0}


def test_spread_gives_min_median_max_and_the_median_where_one_run_has_its_value() -> None:
    runs = [_run(90.0, 234.6), _run(87.4, 226.5), _run(95.6, 373.7, parked=2),
            _run(92.1, 233.7), _run(98.7, 248.1)]
    out = demo.spread(runs)
    assert out["spread"]["ingest_to_index_p99_ms"] == {"min": 226.5, "median": 234.6,
                                                      "max": 373.7}
    assert out["spread"]["ingest_to_index_p50_ms"] == {"min": 87.4, "median": 92.1, "max": 98.7}
    assert out["ingest_to_index_p99_ms"] == 234.6 and out["ingest_to_index_p50_ms"] == 92.1
    assert out["events_applied"] == 500 and out["events_rejected"] == 5
    assert out["events_parked"] == 2
    assert out["runs"] == runs


def test_spread_of_an_even_number_of_runs_and_of_runs_without_a_quantile() -> None:
    out = demo.spread([_run(80.0, 200.0), _run(None, None), _run(100.0, 300.0)])
    # the median of the two runs that have a value: the mean of the middle two
    assert out["ingest_to_index_p99_ms"] == 250.0
    assert out["spread"]["ingest_to_index_p99_ms"] == {"min": 200.0, "median": 250.0,
                                                      "max": 300.0}
    none = demo.spread([_run(None, None)])
    assert none["ingest_to_index_p99_ms"] is None and none["spread"]["ingest_to_index_p99_ms"] is None


def test_run_demos_runs_each_from_its_own_folder_and_prints_one_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen: list[Path | None] = []
    p99s = iter([240.0, 230.0, 250.0])

    def fake(args: Any, emit: Any = None) -> int:
        seen.append(args.workdir)
        emit(_run(90.0, next(p99s)))
        return 0

    monkeypatch.setattr(demo, "run_demo", fake)
    args = Namespace(runs=3, once=True, workdir=tmp_path)
    assert demo.run_demos(args) == 0
    assert seen == [tmp_path / "run-1", tmp_path / "run-2", tmp_path / "run-3"]
    assert args.workdir == tmp_path  # the caller's arguments are left as they were
    out = json.loads(capsys.readouterr().out)
    assert out["spread"]["ingest_to_index_p99_ms"] == {"min": 230.0, "median": 240.0, "max": 250.0}
    assert len(out["runs"]) == 3


def test_a_failing_run_stops_the_series_with_its_code(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    calls = []

    def fake(args: Any, emit: Any = None) -> int:
        calls.append(1)
        return 1

    monkeypatch.setattr(demo, "run_demo", fake)
    assert demo.run_demos(Namespace(runs=5, once=True, workdir=None)) == 1
    assert calls == [1] and capsys.readouterr().out == ""


@pytest.mark.parametrize("argv, words", [
    (["demo", "--runs", "3"], "--runs needs --once"),
    (["demo", "--once", "--runs", "0"], "--runs"),
    (["demo", "--once", "--runs", "two"], "--runs"),
])
def test_bad_runs_get_one_line_and_exit_2(argv: list[str], words: str,
                                         capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert words in err[-1]
    assert not any("Traceback" in line for line in err)
