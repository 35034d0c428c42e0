"""Prometheus metrics (names and meaning: README, "Metrics").

Counts that must survive restarts exactly (event outcomes, DLQ reasons, bandit totals) are
read from the partition states by a collector, so ``profiles_events_total`` counts each
event once even when a restarted worker re-reads offsets it had applied.  No user id is ever
a label; partition labels are removed when a partition is revoked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class BatchHistogram(Collector):
    """A Prometheus histogram observed a whole numpy array at a time.

    ``prometheus_client.Histogram.observe`` costs a lock and a Python call per value; the
    worker observes ingest→index latency for every event of a batch, so it bins them with one
    ``searchsorted`` instead.  Exposition is identical to a regular histogram.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.array([*buckets, float("inf")], dtype=np.float64)
        self.counts = np.zeros(len(self.bounds), dtype=np.int64)  # per bucket, not cumulative
        self.sum = 0.0
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.size:
            idx = np.searchsorted(self.bounds, values, side="left")  # first bound >= value ("le")
            self.counts += np.bincount(idx, minlength=len(self.bounds))
            self.sum += float(values.sum())

    def collect(self):
        cumulative = np.cumsum(self.counts)
        yield HistogramMetricFamily(
            self.name, self.documentation, sum_value=self.sum,
            buckets=[(floatToGoString(b), int(c)) for b, c in zip(self.bounds, cumulative)])


class StateCollector(Collector):
    """Exposes the exactly-once counters held in partition states."""

    def __init__(self, states: Callable[[], Iterable]) -> None:
        self._states = states

    def collect(self):
        events = CounterMetricFamily(
            "profiles_events", "Events by type and final outcome (counted once per event)",
            labels=["type", "outcome"],
        )
        dlq = CounterMetricFamily("profiles_dlq", "Dead-lettered events by reason", labels=["reason"])
        imps = CounterMetricFamily("profiles_bandit_impressions", "Bandit impressions counted")
        rews = CounterMetricFamily("profiles_bandit_rewards", "Bandit rewards counted (weighted)")
        parked = GaugeMetricFamily("profiles_parked_events", "Events waiting for their item's vector")
        forget = CounterMetricFamily("profiles_forget", "Users erased by a forget event")
        expired = CounterMetricFamily("profiles_expired", "Profiles removed by the TTL")
        outcome_totals: dict[tuple[str, str], float] = {}
        dlq_totals: dict[str, float] = {}
        n_parked = n_forget = n_expired = 0
        imp_total = rew_total = 0.0
        for st in self._states():
            for key, n in st.outcomes.items():
                outcome_totals[key] = outcome_totals.get(key, 0) + n
            for reason, n in st.dlq.items():
                dlq_totals[reason] = dlq_totals.get(reason, 0) + n
            n_parked += len(st.parked)
            n_forget += st.outcomes.get(("forget", "applied"), 0)
            n_expired += st.expired
            i, r = st.arms.totals()
            imp_total += i
            rew_total += r
        for (etype, outcome), n in sorted(outcome_totals.items()):
            events.add_metric([etype, outcome], n)
        for reason, n in sorted(dlq_totals.items()):
            dlq.add_metric([reason], n)
        imps.add_metric([], imp_total)
        rews.add_metric([], rew_total)
        parked.add_metric([], n_parked)
        forget.add_metric([], n_forget)
        expired.add_metric([], n_expired)
        yield from (events, dlq, imps, rews, parked, forget, expired)


class Metrics:
    """The worker's metric objects, on their own registry."""

    def __init__(self, states: Callable[[], Iterable]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.registry.register(StateCollector(states))
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, fds
        self.ingest_to_index = BatchHistogram(
            "profiles_ingest_to_index_seconds",
            "Kafka message timestamp to the profile being searchable in the index",
            LATENCY_BUCKETS, r,
        )
        self.batch_size = Histogram(
            "profiles_batch_size", "Events per applied micro-batch",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000), registry=r,
        )
        self.encoder_seconds = Histogram(
            "profiles_encoder_seconds", "Wall time of one encoder call (a micro-batch of texts)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )
        self.encoder_texts = Counter("profiles_encoder_texts", "Texts encoded", ["kind"], registry=r)
        self.encoder_errors = Counter("profiles_encoder_errors", "Failed encoder calls", registry=r)
        self.index_vectors = Gauge("profiles_index_vectors", "Vectors in each FAISS index", ["index"], registry=r)
        self.lag = Gauge(
            "profiles_consumer_lag", "Fetch high watermark minus next offset to apply",
            ["topic", "partition"], registry=r,
        )
        self.applied_offset = Gauge(
            "profiles_next_offset", "Next offset to apply per partition (state covers all before it)",
            ["topic", "partition"], registry=r,
        )
        self.redelivered = Counter(
            "profiles_redelivered", "Records re-read at offsets the state already covers (skipped)",
            registry=r,
        )
        self.snapshots = Counter("profiles_snapshots", "State snapshots written", registry=r)
        self.snapshot_seconds = Histogram(
            "profiles_snapshot_seconds", "Wall time to write a state snapshot",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.ready = Gauge("profiles_ready", "1 when state recovery has finished", registry=r)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the series of a partition this worker no longer owns."""
        for gauge in (self.lag, self.applied_offset):
            try:
                gauge.remove(topic, str(partition))
            except KeyError:
                pass
