"""Per-arm bandit gauges for the top arms only (bounded label cardinality).

Register next to the StateCollector::

    self.registry.register(BanditArmsCollector(states))

Series (``arm`` label only for the ``top_n`` arms with the most impressions, merged over the
partitions this worker owns; ``top_n`` from ``PROFILES_BANDIT_TOP_ARMS``, default 20):

* ``profiles_bandit_arm_impressions{arm}``, ``profiles_bandit_arm_rewards{arm}``: counts
  (discounted counts when ``PROFILES_BANDIT_HALF_LIFE_MS`` is set);
* ``profiles_bandit_arm_posterior_mean{arm}``: alpha / (alpha + beta);
* ``profiles_bandit_arms``: number of distinct arms (no label).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.core.bandit import ArmStats


def _default_top_n() -> int:
    try:
        return max(0, int(os.environ.get("PROFILES_BANDIT_TOP_ARMS", "20")))
    except ValueError:
        return 20


class BanditArmsCollector(Collector):
    def __init__(self, states: Callable[[], Iterable], top_n: int | None = None) -> None:
        self._states = states
        self.top_n = _default_top_n() if top_n is None else int(top_n)

    def collect(self):
        imp_g = GaugeMetricFamily("profiles_bandit_arm_impressions",
                                  "Impressions of the top arms (by impressions)", labels=["arm"])
        rew_g = GaugeMetricFamily("profiles_bandit_arm_rewards",
                                  "Rewards of the top arms (by impressions)", labels=["arm"])
        mean_g = GaugeMetricFamily("profiles_bandit_arm_posterior_mean",
                                   "Beta posterior mean of the top arms", labels=["arm"])
        n_g = GaugeMetricFamily("profiles_bandit_arms", "Distinct bandit arms counted")
        parts = [st.arms for st in self._states()]
        if parts:
            merged = ArmStats.merged(parts, parts[0].params)
            names = merged.arms()
            st = merged.state()
            imps, rews = st["impressions"], st["rewards"]
            top = np.argsort(-imps, kind="stable")[: self.top_n]
            alpha, beta = merged.posteriors([names[i] for i in top])
            for j, i in enumerate(top):
                imp_g.add_metric([names[i]], float(imps[i]))
                rew_g.add_metric([names[i]], float(rews[i]))
                mean_g.add_metric([names[i]], float(alpha[j] / (alpha[j] + beta[j])))
            n_g.add_metric([], len(names))
        else:
            n_g.add_metric([], 0)
        yield from (imp_g, rew_g, mean_g, n_g)
