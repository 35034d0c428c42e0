"""The latency budget's pieces (stream.worker.latency): the fetch log, a batch's stage times,
the per-stage histograms against prometheus_client's own histogram, the GC timer."""

from __future__ import annotations

import asyncio
import gc
from collections import namedtuple

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.worker.latency import (
    STAGES,
    BatchTiming,
    FetchLog,
    GcTimer,
    StageHistograms,
    freeze_heap,
    set_torch_threads,
    stage_times,
)
from stream.worker.metrics import LATENCY_BUCKETS

pytestmark = pytest.mark.unit


class Ticks:
    """A clock that returns the given times in turn."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_fetch_log_gives_each_offset_the_time_of_the_poll_that_returned_it() -> None:
    log = FetchLog(Ticks(10.0, 11.0, 12.0, 13.0))
    log.polled({0: 4, 1: 2})   # t=10: p0 offsets ..4, p1 ..2
    log.polled({0: 9})         # t=11: p0 5..9
    log.polled({1: 7})         # t=12: p1 3..7
    log.polled({0: 3})         # t=13: p0 re-read from 0 after a seek: a new run of polls
    parts = np.array([0, 0, 0, 1, 1, 1, 2])
    offs = np.array([0, 3, 4, 2, 3, 8, 0])
    got = log.times(parts, offs)
    # p0 after the seek: only the newest run counts; offset 4 is past it (unknown)
    np.testing.assert_array_equal(got[:2], [13.0, 13.0])
    assert np.isnan(got[2])
    np.testing.assert_array_equal(got[3:5], [10.0, 12.0])
    assert np.isnan(got[5]) and np.isnan(got[6])  # past every poll; a partition never polled


def test_fetch_log_is_bounded_per_partition() -> None:
    log = FetchLog(lambda: 1.0, polls=3)
    for off in range(10):
        log.polled({0: off})
    got = log.times(np.array([0, 0]), np.array([0, 9]))
    assert got[0] == 1.0 and got[1] == 1.0  # offset 0 falls to the oldest poll kept
    assert len(log._polls[0]) == 3


def test_fetch_log_wraps_the_consumers_getmany() -> None:
    TP = namedtuple("TP", "topic partition")
    Rec = namedtuple("Rec", "offset")

    class Consumer:
        async def _getmany(self, active: object, timeout: float) -> dict:
            return {TP("events", 2): [Rec(5), Rec(6)], TP("events", 3): [],
                    TP("other", 4): [Rec(1)]}

    c = Consumer()
    log = FetchLog(lambda: 7.5)
    assert log.wrap(c, "events")
    assert not FetchLog().wrap(object(), "events")  # no _getmany: nothing to wrap
    out = asyncio.run(c._getmany(None, 0.1))
    assert len(out[TP("events", 2)]) == 2
    assert log.times(np.array([2, 2, 3]), np.array([5, 6, 0]))[:2].tolist() == [7.5, 7.5]
    assert 3 not in log._polls and 4 not in log._polls  # empty; another topic


def test_stage_times_split_the_path_and_add_up() -> None:
    clock = Ticks(100.0)  # closed
    timing = BatchTiming.of([0, 0, 1], [5, 6, 9], [99.5, None, 99.7], None, clock=clock,
                            wall=lambda: 1_000_100.0)
    timing.fetched = np.array([99.2, 99.3, np.nan])
    timing.locked = 100.4
    ts_ms = np.array([1_000_099_000, 1_000_099_100, 1_000_099_500])  # wall ms = mono 99.0 ...
    out = stage_times(timing, np.array([1, 0, 0]), np.array([9, 5, 6]), ts_ms[[2, 0, 1]],
                      applying=100.6, searchable=100.65)
    assert out.shape == (len(STAGES), 3)
    assert (out >= 0).all()
    # event (1, 9): ts 99.5, no fetch time -> its delivery (99.7)
    np.testing.assert_allclose(out[:, 0], [0.2, 0.0, 0.3, 0.4, 0.2, 0.05], atol=1e-9)
    # event (0, 5): ts 99.0, fetched 99.2, delivered 99.5
    np.testing.assert_allclose(out[:, 1], [0.2, 0.3, 0.5, 0.4, 0.2, 0.05], atol=1e-9)
    # event (0, 6): ts 99.1, fetched 99.3, not stamped -> delivered at close
    np.testing.assert_allclose(out[:, 2], [0.2, 0.7, 0.0, 0.4, 0.2, 0.05], atol=1e-9)
    np.testing.assert_allclose(out.sum(axis=0), 100.65 - np.array([99.5, 99.0, 99.1]))


def test_stage_histograms_expose_what_prometheus_histograms_would() -> None:
    rng = np.random.default_rng(7)
    ours = StageHistograms(LATENCY_BUCKETS, CollectorRegistry())
    ref_reg = CollectorRegistry()
    ref = Histogram("profiles_stage_seconds", "x", ["stage"], buckets=LATENCY_BUCKETS,
                    registry=ref_reg)
    for _ in range(3):
        batch = rng.exponential(0.08, size=(len(STAGES), 50))
        batch[0, :3] = LATENCY_BUCKETS[2]  # on a bound: counted in it ("le")
        ours.observe(batch)
        for s, stage in enumerate(STAGES):
            for v in batch[s]:
                ref.labels(stage).observe(float(v))
    reg = CollectorRegistry()
    reg.register(ours)

    def lines(text: bytes) -> list[str]:
        return sorted(ln for ln in text.decode().splitlines()
                      if ln.startswith("profiles_stage_seconds_")
                      and not ln.startswith(("profiles_stage_seconds_created",
                                             "profiles_stage_seconds_sum")))

    assert lines(generate_latest(reg)) == lines(generate_latest(ref_reg))
    for s, stage in enumerate(STAGES):
        ref_sum = ref.labels(stage)._sum.get()
        assert ours.sums[s] == pytest.approx(ref_sum)
    assert ours.quantile("apply", 0.5) is not None


def test_gc_timer_times_collections_by_generation() -> None:
    seen: list[tuple[int, float]] = []
    timer = GcTimer(lambda g, s: seen.append((g, s)))
    timer.install()
    try:
        gc.collect(2)
    finally:
        timer.uninstall()
    assert (2, seen[-1][1]) == seen[-1] and seen[-1][1] >= 0
    n = len(seen)
    gc.collect()
    assert len(seen) == n  # uninstalled


def test_freeze_heap_leaves_full_collections_nothing_to_walk() -> None:
    keep = [[i] for i in range(50_000)]  # tracked objects alive now
    try:
        assert freeze_heap() >= len(keep)
        assert gc.get_count()[0] < 100 and len(gc.get_objects(2)) < len(keep)
    finally:
        gc.unfreeze()


def test_the_tools_report_a_runs_own_share_of_the_stages() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from stream.tools.latency_report import latency_budget

    reg = CollectorRegistry()
    hist = StageHistograms(LATENCY_BUCKETS, reg)

    def scrape() -> dict[str, list]:
        return {f.name: f.samples
                for f in text_string_to_metric_families(generate_latest(reg).decode())}

    hist.observe(np.full((len(STAGES), 10), 2.0))  # before the run: 2 s each
    before = scrape()
    run = np.tile(np.array([0.004, 0.02, 0.03, 0.04, 0.06, 0.2])[:, None], (1, 100))
    hist.observe(run)
    out = latency_budget(scrape(), before)
    assert [out["stages"][s]["mean_ms"] for s in STAGES] == [4.0, 20.0, 30.0, 40.0, 60.0, 200.0]
    for s, v in zip(STAGES, run[:, 0]):  # every sample in one bucket: p99 within it
        assert out["stages"][s]["p99_ms"] <= 1000 * min(b for b in LATENCY_BUCKETS if b >= v)
    assert 1000 < latency_budget(scrape())["stages"]["apply"]["p99_ms"] <= 2500  # all of it


def test_the_settings_of_the_fixes() -> None:
    from stream.core.errors import ConfigError
    from stream.settings import Settings

    s = Settings.from_env({})
    assert s.gc_freeze is True and s.encoder_threads == 1
    assert Settings.from_env({"PROFILES_GC_FREEZE": "false"}).gc_freeze is False
    with pytest.raises(ConfigError, match="encoder_threads must be >= 0"):
        Settings.from_env({}, encoder_threads=-1)
    with pytest.raises(ConfigError, match="PROFILES_GC_FREEZE='maybe'"):
        Settings.from_env({"PROFILES_GC_FREEZE": "maybe"})


def test_set_torch_threads() -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
        set_torch_threads(0)  # torch's default stays
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
