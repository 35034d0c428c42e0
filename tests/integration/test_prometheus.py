"""A real Prometheus scraping a real worker during a replay; every dashboard query answers.

Prometheus runs with the shipped config and rules (``start_prometheus``, tests/prom.py).  One
worker (real encoder) applies the first 12,000 events of the generated log replayed at a fixed
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

import json
import time

import pytest

from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from tests.conftest import kafka, total_outcomes
from tests.prom import MALFORMED, WINDOW_S, Prometheus, Series, mixed_log, needs_prometheus
from tests.unit.test_deploy import DASHBOARD, padding_problems

pytestmark = [pytest.mark.timeout(600), needs_prometheus]

# Published rate and how much of the generated log: 12,000 events (+ 240 mixed in) in ~41 s.
# The rate leaves the worker headroom on a busy 2-core machine (measured: it keeps up with
# ~450 events/s at a load of 10), so what it applies in the window is what was published.
RATE = 300.0
N_EVENTS = 12_000


def timeline(prom: Prometheus, t0: float) -> list[tuple[float, int, int]]:
    """(seconds since t0, events with an outcome, total lag) once a second until now."""
    def series(expr):
        data = prom.api("query_range", query=expr, start=f"{t0:.3f}", end=f"{time.time():.3f}",
                        step="1")
        return {round(float(t) - t0): int(float(v)) for t, v in data["result"][0]["values"]} \
            if data["result"] else {}

    applied, lag = series("sum(profiles_events_total)"), series("sum(profiles_consumer_lag)")
    return [(t, applied.get(t, -1), lag.get(t, -1)) for t in sorted(applied)]


def _values(result: Series) -> list[float]:
    return [v for _, v in result]


# ---------------------------------------------------------------------------- the test
def test_every_panel_answers_with_plausible_values(broker, topics, dataset, start_worker,
                                                   start_prometheus, tmp_path):
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
    prom = start_prometheus(f"127.0.0.1:{worker.settings.http_port}")
    prom.wait_scraped()

    events = ds.events[:N_EVENTS]
    log, mixed = mixed_log(events, tmp_path / "events.jsonl")
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
    prom.wait_scraped(after=at, timeout_s=30)
    answers = prom.panels(dashboard, at)

    def panel(title: str, i: int = 0) -> Series:
        return answers[title, i]

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
    rules = prom.wait_rules_evaluated()
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert "ProfilesWorkerDown" not in firing and "ProfilesEncoderErrors" not in firing, firing
