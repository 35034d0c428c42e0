"""Multi-interest profiles in the worker (issue 13): the batch hook, the TTL hook and the
metric.  The rule and its state are :mod:`stream.core.interests`; each partition's table is
``PartitionState.interests`` (None when ``PROFILES_INTERESTS_K=0``), snapshotted with the rest
of the partition, erased by ``forget`` (``PartitionState.erase``) and by the TTL (here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from stream.core.events import Event
from stream.core.profile import ProfileParams
from stream.worker.state import PartitionState

__all__ = ["InterestsCollector", "apply_interests", "expire_interests"]


def apply_interests(states: Mapping[int, PartitionState],
                    work: Mapping[int, tuple[Sequence[Event], np.ndarray, list[int]]],
                    pp: ProfileParams) -> None:
    """Fold a batch into its partitions' interests: the events, vectors and weights the
    profiles got (``Pipeline._apply_profiles``), each user's events in batch (offset) order."""
    for p, (events, vectors, _msg_ts) in work.items():
        table = states[p].interests
        if table is None or not events:
            continue
        ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
        table.apply([e.user_id for e in events], ts, pp.weight_array([e.type for e in events]),
                    vectors)


def expire_interests(st: PartitionState, users: Iterable[str]) -> None:
    """Drop the interests of users the TTL removed (``ProfileStore.expire``)."""
    if st.interests is not None:
        for user in users:
            st.interests.remove(user)


class InterestsCollector(Collector):
    """``profiles_interest_users{interests="n"}``: users of this worker's partitions by how
    many interests they have (n = 0..PROFILES_INTERESTS_K, at most 33 series)."""

    def __init__(self, states: Callable[[], Iterable[PartitionState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("profiles_interest_users",
                              "Users of this worker's partitions by number of interests",
                              labels=["interests"])
        counts: np.ndarray | None = None
        for st in self._states():
            if st.interests is None:
                continue
            n = np.bincount(st.interests.counts(), minlength=st.interests.k + 1)
            counts = n if counts is None else counts + n
        if counts is not None:
            for i, c in enumerate(counts.tolist()):
                g.add_metric([str(i)], c)
        yield g
