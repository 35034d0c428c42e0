"""Multi-interest profiles in the worker (issue 13): their metric.  The rule and its state are
:mod:`stream.core.interests`; each partition's table is ``PartitionState.interests`` (None when
``PROFILES_INTERESTS_K=0``), folded in by ``ProfileStore.apply`` with the profile's own arrays,
dropped with the profile by ``ProfileStore.expire`` (the TTL), erased by ``forget``
(``PartitionState.erase``) and snapshotted with the rest of the partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from stream.worker.state import PartitionState

__all__ = ["InterestsCollector"]


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
