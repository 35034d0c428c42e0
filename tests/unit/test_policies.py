"""Policies (Thompson, UCB1, epsilon-greedy), their propensities, decision records, discounted
and per-context counts, invalid configs, and the top-arms metrics collector."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stream.core.bandit import ArmStats, BanditParams, rerank, seeded_rng
from stream.core.errors import ConfigError
from stream.core.policies import (
    UCB1,
    EpsilonGreedy,
    EpsilonGreedyConfig,
    PolicyConfigError,
    Thompson,
    ThompsonConfig,
    UCB1Config,
    make_policy,
    parse_policy,
)
from stream.serve.decisions import decision_record
from stream.settings import Settings
from stream.worker.metrics import BanditArmsCollector

pytestmark = pytest.mark.unit


def posterior(n_arms: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    imp = rng.integers(0, 200, n_arms).astype(float)
    rew = np.floor(imp * rng.uniform(0, 0.3, n_arms))
    return 1.0 + rew, 1.0 + imp - rew


# ---------------------------------------------------------------------------- configs

@pytest.mark.parametrize("spec, message", [
    ("egreedy:epsilon=1.5", "egreedy.epsilon must be a finite number in [0.0, 1.0], got 1.5"),
    ("egreedy:epsilon=-0.1", "egreedy.epsilon must be a finite number in [0.0, 1.0]"),
    ("egreedy:epsilon=nan", "egreedy.epsilon must be a finite number"),
    ("egreedy:epsilon=abc", "egreedy.epsilon must be a number, got 'abc'"),
    ("ucb1:c=-1", "ucb1.c must be a finite number in [0.0, inf]"),
    ("ucb1:c=inf", "ucb1.c must be a finite number"),
    ("thompson:samples=999", "thompson.samples must be an integer >= 1000, got 999"),
    ("thompson:samples=1.5", "thompson.samples must be an integer, got '1.5'"),
    ("ucb1:alpha=1", "ucb1 has no parameter alpha; known: c"),
    ("softmax", "unknown policy 'softmax'; choose one of thompson, ucb1, egreedy"),
    ("egreedy:epsilon", "expected name=value"),
])
def test_invalid_policy_configs_are_rejected_clearly(spec, message):
    with pytest.raises(PolicyConfigError) as info:
        parse_policy(spec)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_configs_are_frozen_and_validated_on_construction():
    cfg = EpsilonGreedyConfig(0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epsilon = 0.5  # type: ignore[misc]
    with pytest.raises(PolicyConfigError, match="ucb1.c"):
        UCB1Config(c=True)  # bool is not a number here
    with pytest.raises(PolicyConfigError, match="needs a EpsilonGreedyConfig"):
        EpsilonGreedy(UCB1Config())  # type: ignore[arg-type]
    with pytest.raises(PolicyConfigError, match="has no parameter"):
        make_policy("thompson", {"epsilon": 0.1})
    assert parse_policy("ucb1:c=1.5").config == UCB1Config(1.5)
    assert parse_policy(parse_policy("egreedy:epsilon=0.05").describe()).config.epsilon == 0.05
    assert parse_policy("thompson").config == ThompsonConfig(1000)


@pytest.mark.parametrize("overrides, message", [
    ({"bandit_policy": "egreedy:epsilon=7"}, "bandit_policy: egreedy.epsilon must be"),
    ({"bandit_policy": "greedy"}, "bandit_policy: unknown policy 'greedy'"),
    ({"bandit_half_life_ms": -1.0}, "bandit_half_life_ms must be >= 0"),
    ({"bandit_context": "region"}, "bandit_context must be '', 'position' or 'segment'"),
])
def test_invalid_settings_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings(**overrides)


@pytest.mark.parametrize("kwargs, message", [
    ({"half_life_ms": 0.0}, "half_life_ms must be None (no discounting) or a finite number > 0"),
    ({"half_life_ms": float("inf")}, "half_life_ms must be None"),
    ({"context": "region"}, "context must be one of"),
])
def test_invalid_bandit_params(kwargs, message):
    with pytest.raises(ValueError) as info:
        BanditParams(**kwargs)
    assert message in str(info.value)


# ---------------------------------------------------------------------------- policies

def test_thompson_rank_is_the_rerank_of_before():
    s = ArmStats(BanditParams()).add([f"a{i}" for i in range(30)],
                                     np.arange(30.0) * 7, np.arange(30.0))
    arms = [f"a{i}" for i in range(35)]  # 5 unknown arms: the prior (cold start)
    sims = seeded_rng(3, "sim").uniform(-1, 1, len(arms))
    alpha, beta = s.posteriors(arms)
    for w in (0.0, 0.2, 1.0):
        want = rerank(arms, sims, s, seeded_rng(42, "u1"), explore_weight=w)
        got = Thompson().rank(alpha, beta, seeded_rng(42, "u1"), similarity=sims, explore_weight=w)
        assert got == want


def test_ucb1_is_deterministic_with_a_finite_cold_start_bonus():
    pol = UCB1(UCB1Config(c=2.0))
    alpha = np.array([1.0 + 50, 1.0 + 10, 1.0])  # the third arm is new: just the prior
    beta = np.array([1.0 + 50, 1.0 + 190, 1.0])
    idx = pol.index(alpha, beta)
    assert np.isfinite(idx).all()
    n_total = (alpha + beta).sum()
    assert idx[2] == pytest.approx(0.5 + math.sqrt(2 * math.log(n_total) / 2))
    assert pol.rank(alpha, beta, seeded_rng(0)) == pol.rank(alpha, beta, seeded_rng(1)) == [2, 0, 1]
    np.testing.assert_array_equal(pol.propensities(alpha, beta, [2, 0, 1], 3, seeded_rng(0)), 1.0)
    np.testing.assert_array_equal(pol.choice_probabilities(alpha, beta, seeded_rng(0)), [0, 0, 1])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_egreedy_closed_form_matches_monte_carlo(eps):
    pol = EpsilonGreedy(EpsilonGreedyConfig(eps))
    alpha, beta = posterior(8, seed=1)
    sims = seeded_rng(0, "s").uniform(0, 1, 8)
    order = pol.rank(alpha, beta, seeded_rng(5), similarity=sims, explore_weight=0.5)
    exact = pol.propensities(alpha, beta, order, 4, seeded_rng(0), sims, 0.5)
    n = 20_000
    ranks = pol.sample_rankings(alpha, beta, seeded_rng(9), n, sims, 0.5)[:, :4]
    mc = (ranks == np.asarray(order[:4])).mean(axis=0)
    se = np.sqrt(exact * (1 - exact) / n)
    assert np.all(np.abs(mc - exact) <= 4 * se + 1e-12), (mc, exact)
    pi = pol.choice_probabilities(alpha, beta, seeded_rng(0))
    assert pi.sum() == pytest.approx(1.0) and pi.max() == pytest.approx(1 - eps + eps / 8)


def _top_probability_by_quadrature(alpha, beta, i):
    """P(theta_i is the largest) = integral of f_i(x) prod_{j != i} F_j(x) dx."""
    from scipy import integrate, stats

    others = [j for j in range(len(alpha)) if j != i]

    def f(x):
        out = stats.beta.pdf(x, alpha[i], beta[i])
        for j in others:
            out = out * stats.beta.cdf(x, alpha[j], beta[j])
        return out

    return integrate.quad(f, 0, 1, limit=200, points=[alpha[i] / (alpha[i] + beta[i])])[0]


def test_thompson_propensity_error_is_as_documented():
    """Monte-Carlo propensity at 1,000 re-samples vs the exact integral (first position)."""
    alpha = np.array([3.0, 5.0, 2.0, 8.0, 1.0])
    beta = np.array([20.0, 30.0, 10.0, 60.0, 1.0])
    pol = Thompson()
    exact = np.array([_top_probability_by_quadrature(alpha, beta, i) for i in range(5)])
    assert exact.sum() == pytest.approx(1.0, abs=1e-6)
    worst = 0.0
    for i in range(5):  # pretend arm i was served first
        order = [i] + [j for j in range(5) if j != i]
        p = pol.propensities(alpha, beta, order, 1, seeded_rng(42, "u", str(i)))[0]
        n = pol.config.samples
        bound = 4 * math.sqrt(exact[i] * (1 - exact[i]) / n) + 1 / (n + 1)
        assert abs(p - exact[i]) <= bound, (i, p, exact[i])
        assert 1 / (n + 1) <= p <= 1
        worst = max(worst, abs(p - exact[i]))
    assert worst <= 0.05


def test_decision_record():
    pol = Thompson()
    arms = [f"i{j}" for j in range(60)]
    alpha, beta = posterior(60, seed=3)
    sims = seeded_rng(1, "s").uniform(0, 1, 60)
    order = pol.rank(alpha, beta, seeded_rng(42, "u1"), similarity=sims, explore_weight=0.2)
    rec = decision_record(pol, "u1", arms, alpha, beta, sims, 0.2, order, 5, seed=42,
                          decision_id="d1", ts_ms=123)
    again = decision_record(pol, "u1", arms, alpha, beta, sims, 0.2, order, 5, seed=42,
                            decision_id="d1", ts_ms=123)
    assert rec == again  # seeded by (seed, user, decision id)
    assert rec["propensity_method"] == "monte-carlo" and rec["propensity_samples"] == 1000
    assert [s["arm"] for s in rec["shown"]] == [arms[i] for i in order[:5]]
    assert [s["position"] for s in rec["shown"]] == list(range(5))
    assert all(1 / 1001 <= s["propensity"] <= 1 for s in rec["shown"])
    eg = decision_record(EpsilonGreedy(), "u1", arms, alpha, beta, sims, 0.2, order, 3, seed=42)
    assert eg["propensity_method"] == "closed-form" and eg["propensity_samples"] == 0
    assert decision_record(UCB1(), "u", arms, alpha, beta, sims, 0.2, order, 2,
                           seed=1)["shown"][0]["propensity"] == 1.0


# ---------------------------------------------------------------------------- discounting

H = 3_600_000.0  # one hour


def closed_form(events, arm, at, types=("view",)):
    return sum(2.0 ** ((ts - at) / H) for a, t, ts in events if a == arm and t in types)


def test_discounted_count_equals_closed_form():
    p = BanditParams(half_life_ms=H)
    t0 = 1_574_553_634_762  # epoch ms (OBD, Nov 2019): must not overflow
    s = ArmStats(p)
    s.update(["a", "a", "b"], ["view", "click", "view"], ts=[t0, t0, t0])
    s.update(["a"], ["view"], ts=[t0 + 2 * H])  # two half-lives later
    assert s.anchor == t0 + 2 * H
    assert s.counts("a") == pytest.approx((1 + 0.25, 0.25))
    assert s.counts("b") == pytest.approx((0.25, 0.0))
    # as of one more half-life
    assert s.counts("a", at=t0 + 3 * H) == pytest.approx((1.25 / 2, 0.125))
    # an old event arriving late counts with its own (small) weight, the anchor stays
    s.update(["b"], ["view"], ts=[t0 - H])
    assert s.counts("b")[0] == pytest.approx(0.25 + 0.125) and s.anchor == t0 + 2 * H
    a, b = s.posterior("a")
    assert (a, b) == pytest.approx((1 + 0.25, 1 + 1.0))
    with pytest.raises(ValueError, match="need one event time"):
        s.update(["a"], ["view"])


@settings(derandomize=True, deadline=None, max_examples=40)
@given(
    data=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["view", "click"]),
                            st.integers(0, 50 * int(H))), min_size=1, max_size=60),
    owners=st.lists(st.integers(0, 3), min_size=60, max_size=60),
    batch=st.integers(1, 7),
)
def test_discounted_partials_merge_to_closed_form(data, owners, batch):
    p = BanditParams(half_life_ms=H)
    base = 1_700_000_000_000
    events = [(a, t, base + ts) for a, t, ts in data]
    parts = [ArmStats(p) for _ in range(4)]
    for k in range(4):
        mine = [e for e, o in zip(events, owners) if o == k]
        for j in range(0, len(mine), batch):
            chunk = mine[j:j + batch]
            parts[k].update([e[0] for e in chunk], [e[1] for e in chunk], ts=[e[2] for e in chunk])
    merged = ArmStats.merged(parts, p)
    for order in (parts, parts[::-1]):
        chained = order[0].merge(order[1]).merge(order[2]).merge(order[3])
        assert chained.anchor == merged.anchor
    t_max = max(e[2] for e in events)
    assert merged.anchor == t_max
    for arm in "abc":
        want = (closed_form(events, arm, t_max), closed_form(events, arm, t_max, ("click",)))
        assert merged.counts(arm) == pytest.approx(want, rel=1e-9, abs=1e-12)
    restored = ArmStats.from_state(merged.state(), p)
    assert restored.anchor == merged.anchor and restored.as_dict() == merged.as_dict()


def test_per_position_context_counts():
    p = BanditParams(context="position")
    s = ArmStats(p).update(["x", "x", "x", "y"], ["view", "click", "view", "view"],
                           contexts=[1, 1, 2, None])
    assert s.counts("x") == (2.0, 1.0)  # global counts unchanged
    assert s.counts("x", context=1) == (1.0, 1.0)
    assert s.counts("x", context=2) == (1.0, 0.0)
    assert s.counts("y", context=1) == (0.0, 0.0)
    other = ArmStats(p).update(["x"], ["view"], contexts=[1])
    m = s.merge(other)
    assert m.counts("x", context=1) == (2.0, 1.0) and m.counts("x") == (3.0, 1.0)
    r = ArmStats.from_state(m.state(), p)
    assert r.counts("x", context=1) == (2.0, 1.0)
    assert s.totals() == (3.0, 1.0)


def test_top_arms_collector_bounds_labels():
    class St:
        def __init__(self, arms):
            self.arms = arms

    p = BanditParams()
    parts = [ArmStats(p).add([f"a{i}" for i in range(100)], np.arange(100.0) + k, np.ones(100))
             for k in range(2)]
    reg = CollectorRegistry()
    reg.register(BanditArmsCollector(lambda: [St(x) for x in parts], top_n=5))
    imps = {s.labels["arm"]: s.value for m in reg.collect() for s in m.samples
            if s.name == "profiles_bandit_arm_impressions"}
    assert imps == {f"a{i}": 2.0 * i + 1 for i in range(99, 94, -1)}
    assert reg.get_sample_value("profiles_bandit_arms") == 100
    assert reg.get_sample_value("profiles_bandit_arm_posterior_mean", {"arm": "a99"}) == \
        pytest.approx(3 / (3 + 198))  # Beta(1 + 2, 1 + 199 - 2)
    empty = CollectorRegistry()
    empty.register(BanditArmsCollector(lambda: [], top_n=5))
    assert empty.get_sample_value("profiles_bandit_arms") == 0
