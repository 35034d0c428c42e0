"""Prometheus metrics (names and meaning: README, "Metrics").

Counts that must survive restarts exactly (event outcomes, DLQ reasons, bandit totals) are
read from the partition states by a collector, so ``profiles_events_total`` counts each
event once even when a restarted worker re-reads offsets it had applied.  No user id is ever
a label; partition labels are removed when a partition is revoked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import cast

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string

from stream.core.bandit import MergedArms
from stream.worker.interests import InterestsCollector
from stream.worker.latency import StageHistograms
from stream.worker.state import PartitionState

__all__ = ["LATENCY_BUCKETS", "BanditArmsCollector", "BatchHistogram", "Metrics",
           "StateCollector", "SupervisorMetrics"]

States = Callable[[], Iterable[PartitionState]]
# Prometheus's own float formatting of bucket bounds ("0.005", "10.0", "+Inf"); untyped upstream.
floatToGoString = cast(Callable[[float], str], _untyped_float_to_go_string)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
#: profiles_lock_held_seconds: a slice of a batch holds it for milliseconds, a capture longer
LOCK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


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

    def collect(self) -> Iterator[Metric]:
        cumulative = np.cumsum(self.counts)
        yield HistogramMetricFamily(
            self.name, self.documentation, sum_value=self.sum,
            buckets=[(floatToGoString(b), int(c)) for b, c in zip(self.bounds, cumulative)])


class StateCollector(Collector):
    """Exposes the exactly-once counters held in partition states, one series per partition.

    The ``partition`` label keeps ``rate()`` honest across rebalances: when a partition moves,
    its series ends on the old owner and starts on the new one with the partition's whole
    history, instead of one worker-wide total dropping here and jumping there.
    """

    def __init__(self, states: States) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "profiles_events", "Events by type and final outcome (counted once per event)",
            labels=["type", "outcome", "partition"],
        )
        dlq = CounterMetricFamily("profiles_dlq", "Dead-lettered events by reason",
                                  labels=["reason", "partition"])
        imps = CounterMetricFamily("profiles_bandit_impressions", "Bandit impressions counted",
                                   labels=["partition"])
        rews = CounterMetricFamily("profiles_bandit_rewards", "Bandit rewards counted (weighted)",
                                   labels=["partition"])
        parked = GaugeMetricFamily("profiles_parked_events", "Events waiting for their item's vector",
                                   labels=["partition"])
        parked_bytes = GaugeMetricFamily(
            "profiles_parked_bytes",
            "Bytes parked events are counted for (2 x message + 320 each; PROFILES_PARKED_MAX_BYTES)",
            labels=["partition"])
        forget = CounterMetricFamily("profiles_forget", "Users erased by a forget event",
                                     labels=["partition"])
        expired = CounterMetricFamily("profiles_expired", "Profiles removed by the TTL",
                                      labels=["partition"])
        arms_dropped = CounterMetricFamily(
            "profiles_bandit_arms_dropped",
            "Events whose arm was not counted: new while the arm table was full "
            "(PROFILES_BANDIT_MAX_ARMS; the per-position table counts too)", labels=["partition"])
        for st in sorted(self._states(), key=lambda st: st.partition):
            p = str(st.partition)
            for (etype, outcome), n in sorted(st.outcomes.items()):
                events.add_metric([etype, outcome, p], n)
            for reason, n in sorted(st.dlq.items()):
                dlq.add_metric([reason, p], n)
            i, r = st.arms.totals()
            imps.add_metric([p], i)
            rews.add_metric([p], r)
            parked.add_metric([p], len(st.parked))
            parked_bytes.add_metric([p], sum(pk.size() for pk in st.parked))
            forget.add_metric([p], st.outcomes.get(("forget", "applied"), 0))
            expired.add_metric([p], st.expired)
            arms_dropped.add_metric([p], st.arms.dropped_total())
        yield from (events, dlq, imps, rews, parked, forget, expired, arms_dropped)
        yield parked_bytes


class BanditArmsCollector(Collector):
    """Per-arm gauges for the ``top_n`` arms with the most impressions (merged over the
    partitions this worker owns), and the number of arms.  ``top_n`` is the
    ``bandit_top_arms`` setting (``PROFILES_BANDIT_TOP_ARMS``, ``--bandit-top-arms``).

    * ``profiles_bandit_arm_impressions{arm}``, ``profiles_bandit_arm_rewards{arm}``: counts
      (discounted counts when ``PROFILES_BANDIT_HALF_LIFE_MS`` is set);
    * ``profiles_bandit_arm_posterior_mean{arm}``: alpha / (alpha + beta);
    * ``profiles_bandit_arms``: number of distinct arms (no label).

    The partitions' tables are summed by a :class:`MergedArms` kept between scrapes, so a
    scrape costs numpy work plus the arms new since the last one, not a Python walk over
    every arm on the event loop; ties at the cut go to the arm seen first.
    """

    def __init__(self, states: States, top_n: int) -> None:
        self._states = states
        self.top_n = max(0, int(top_n))
        self._merged = MergedArms()

    def collect(self) -> Iterator[Metric]:
        imp_g = GaugeMetricFamily("profiles_bandit_arm_impressions",
                                  "Impressions of the top arms (by impressions)", labels=["arm"])
        rew_g = GaugeMetricFamily("profiles_bandit_arm_rewards",
                                  "Rewards of the top arms (by impressions)", labels=["arm"])
        mean_g = GaugeMetricFamily("profiles_bandit_arm_posterior_mean",
                                   "Beta posterior mean of the top arms", labels=["arm"])
        n_g = GaugeMetricFamily("profiles_bandit_arms", "Distinct bandit arms counted")
        parts = [st.arms for st in self._states()]
        if parts:
            names, alive, imps, rews = self._merged.update(parts)
            live = np.flatnonzero(alive)
            k = min(self.top_n, live.size)
            top = live[:0]
            if k:  # the k largest; ties at the cut go to the arm this view saw first
                cut = np.partition(imps[live], live.size - k)[live.size - k]
                cand = live[imps[live] >= cut]
                top = cand[np.lexsort((cand, -imps[cand]))[:k]]
            bp = parts[0].params
            for i in top.tolist():
                imp, rew = float(imps[i]), float(rews[i])
                alpha, beta = bp.prior_alpha + rew, bp.prior_beta + max(imp - rew, 0.0)
                imp_g.add_metric([names[i]], imp)
                rew_g.add_metric([names[i]], rew)
                mean_g.add_metric([names[i]], alpha / (alpha + beta))
            n_g.add_metric([], live.size)
        else:
            n_g.add_metric([], 0)
        yield from (imp_g, rew_g, mean_g, n_g)


class Metrics:
    """The worker's metric objects, on their own registry."""

    def __init__(self, states: States, top_arms: int = 20) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.registry.register(StateCollector(states))
        self.registry.register(BanditArmsCollector(states, top_arms))
        self.registry.register(InterestsCollector(states))  # profiles_interest_users
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, fds
        self.ingest_to_index = BatchHistogram(
            "profiles_ingest_to_index_seconds",
            "Kafka message timestamp to the profile being searchable in the index",
            LATENCY_BUCKETS, r,
        )
        # the latency budget (stream.worker.latency): per stage, parked events, GC pauses
        self.stages = StageHistograms(LATENCY_BUCKETS, r)  # profiles_stage_seconds{stage}
        self.parked_latency = BatchHistogram(
            "profiles_parked_seconds",
            "Kafka message timestamp to searchable, of events parked for their item's vector "
            "(their count: events that parked and were applied)", LATENCY_BUCKETS, r)
        self.gc_seconds = Histogram(
            "profiles_gc_seconds", "Pauses of the garbage collector, by generation",
            ["generation"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r)
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
        self.encoder_cache_evictions = Counter(
            "profiles_encoder_cache_evictions",
            "Query vectors evicted from the LRU query cache (PROFILES_ENCODER_CACHE_BYTES)",
            registry=r)
        self.catalog_retries = Counter(
            "profiles_catalog_retries",
            "Failures of the item catalogue reader (encoder down, broker), each retried after a "
            "backoff", registry=r)
        self.catalog_reader_down = Gauge(
            "profiles_catalog_reader_down",
            "1 while the item catalogue reader is failing and retrying (the worker is not ready)",
            registry=r)
        self.catalog_rejected = Counter(
            "profiles_catalog_rejected",
            "Items of the items topic left out of the catalogue, by reason (bad_json, "
            "non_finite_vector, encoder_error, ...)", ["reason"], registry=r)
        self.index_vectors = Gauge("profiles_index_vectors", "Vectors in each FAISS index", ["index"], registry=r)
        self.index_info = Gauge(
            "profiles_index_info", "1 for the FAISS factory string each index searches with now "
            "(Flat: exact)", ["index", "kind"], registry=r)
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
        self.offset_gaps = Counter(
            "profiles_offset_gaps",
            "Records that arrived past the next offset to apply (offsets skipped: events not applied)",
            ["topic", "partition"], registry=r,
        )
        self.batch_retries = Counter(
            "profiles_batch_retries",
            "Failed tries of a batch, retried: kind transient (encoder, broker), error (bisected "
            "after PROFILES_BATCH_ATTEMPTS), dlq (the DLQ refused a write: stalled), apply "
            "(state changed part-way: the worker stops)", ["kind"], registry=r,
        )
        self.stalled = Gauge(
            "profiles_stalled",
            "1 while a batch waits on an outage (DLQ not writable, encoder down): nothing is "
            "skipped, the partitions wait", registry=r,
        )
        self.agent_crashes = Counter(
            "profiles_agent_crashes", "Events agent crashes (an exception out of a batch)",
            registry=r,
        )
        # issue 14: who holds the pipeline lock, and how long (a batch waits behind each)
        self.lock_held = Histogram(
            "profiles_lock_held_seconds",
            "Time the pipeline lock was held, by holder (batch, snapshot, segments, parked, "
            "expire, assign, revoke, error): a batch's `lock` stage waits behind the others",
            ["holder"], buckets=LOCK_BUCKETS, registry=r,
        )
        self.snapshots = Counter("profiles_snapshots", "State snapshots written", registry=r)
        self.snapshot_seconds = Histogram(
            "profiles_snapshot_seconds", "Wall time to write a state snapshot",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        # issue 12: kind = base (the whole partition) or delta (what changed since the last)
        self.snapshot_bytes = Counter(
            "profiles_snapshot_bytes", "Bytes of state snapshots written, by kind",
            ["kind"], registry=r,
        )
        self.ready = Gauge("profiles_ready", "1 when state recovery has finished", registry=r)
        self.candidates = Counter(
            "profiles_candidates",
            "Candidates served by /candidates, by the source that found them (a candidate found "
            "by several sources counts once for each)", ["source"], registry=r,
        )
        self.dlq_values_dropped = Counter(
            "profiles_dlq_values_dropped",
            "Dead letters stored anonymous (no value, no user) because their user already had "
            "PROFILES_DLQ_REFS_PER_USER remembered in the partition",
            registry=r,
        )
        self.id_cache_evictions = Counter(
            "profiles_id_cache_evictions",
            "Pseudonyms dropped from the LRU cache to stay within PROFILES_ID_CACHE_BYTES",
            registry=r,
        )
        self.signals_published = Counter(
            "profiles_signals_published", "Signal partials published to the signals topic",
            registry=r,
        )
        self.signals_received = Counter(
            "profiles_signals_received",
            "Signal partials read from the signals topic (this worker's own included)", registry=r,
        )
        self.http_bodies_rejected = Counter(
            "profiles_http_bodies_rejected",
            "Requests this worker answered 413 because the body was over "
            "PROFILES_HTTP_MAX_BODY_BYTES (not read whole)", registry=r,
        )
        self.segment_users = Gauge(  # k labels (PROFILES_SEGMENTS_K <= 256)
            "profiles_segment_users",
            "Users of this worker's partitions per customer segment (sum over workers)",
            ["segment"], registry=r,
        )

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the series of a partition this worker no longer owns."""
        for gauge in (self.lag, self.applied_offset):
            try:
                gauge.remove(topic, str(partition))
            except KeyError:
                pass


class SupervisorMetrics:
    """The parent's own metrics under ``profiles worker --processes N``
    (``stream.worker.supervisor``; served merged with the children's by ``stream.serve.front``,
    where each child's series get a ``process`` label, its slot).  ``own`` holds the parent's
    process collector (its series get ``process="supervisor"``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "profiles_supervisor_restarts",
            "Worker processes started again after they exited, by process slot",
            ["process"], registry=self.registry)
        self.process_up = Gauge(
            "profiles_supervisor_process_up",
            "1 when the worker process runs and its /metrics answered the parent's last scrape",
            ["process"], registry=self.registry)
        self.front_bodies_rejected = Counter(
            "profiles_front_bodies_rejected",
            "Requests the parent answered 413 because the body was over "
            "PROFILES_FRONT_MAX_BODY_BYTES (not forwarded)", registry=self.registry)
        self.own = CollectorRegistry()
        ProcessCollector(registry=self.own)
