"""Off-policy estimators: IPW closed form on the OBD random log, SNIPW/DR/IPW against obp 0.5.7,
and interval coverage on simulations with known click rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stream.core.ope import BanditLog, estimate, fit_reward_model
from stream.core.policies import EpsilonGreedy, EpsilonGreedyConfig, Thompson, parse_policy
from stream.data.offpolicy import policy_distribution, read_log, run_ope
from tests.obd_data import obd_frame, obd_sdist

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def obd_csv(tmp_path_factory):
    from stream.data.obd import extract_obd

    log_csv, _ = extract_obd(obd_sdist(), tmp_path_factory.mktemp("obd"))
    return log_csv


@pytest.fixture(scope="module")
def obd_log(obd_csv):
    return read_log(obd_csv)


def test_ipw_equals_closed_form_on_obd_random(obd_log):
    df = obd_frame()
    train, test = obd_log.split(0.5)
    pol = EpsilonGreedy(EpsilonGreedyConfig(0.2))
    pi = policy_distribution(pol, train, (1.0, 1.0), seed=0)
    # by hand: the arm with the best posterior mean on the first half (by time) gets 0.8 + 0.2/80
    df = df.assign(ts=pd.to_datetime(df["timestamp"])).sort_values("ts", kind="stable")
    first, rest = df.iloc[:5000], df.iloc[5000:]
    g = first.groupby("item_id")["click"].agg(["sum", "count"]).reindex(range(80), fill_value=0)
    best = int(((1 + g["sum"]) / (2 + g["count"])).idxmax())
    want_pi = np.full(80, 0.2 / 80)
    want_pi[best] += 0.8
    np.testing.assert_allclose(pi, want_pi)
    closed = float((rest["click"] * want_pi[rest["item_id"].to_numpy()] / rest["propensity_score"]).mean())
    est = estimate(test, pi, n_boot=200, seed=1)
    assert est["ipw"].value == pytest.approx(closed, rel=1e-12)
    assert est["ipw"].lower <= closed <= est["ipw"].upper


@pytest.mark.parametrize("spec", ["thompson", "egreedy:epsilon=0.3", "ucb1"])
def test_estimators_equal_obp(obd_log, spec):
    from obp.ope import (
        DoublyRobust,
        InverseProbabilityWeighting,
        SelfNormalizedInverseProbabilityWeighting,
    )

    train, test = obd_log.split(0.5)
    pi = policy_distribution(parse_policy(spec), train, (1.0, 1.0), seed=3)
    if spec == "ucb1":  # a deterministic policy: mix with uniform so some rows have weight
        pi = 0.5 * pi + 0.5 / len(pi)
    q = fit_reward_model(test, n_positions=4)
    ours = estimate(test, pi, q, n_boot=50, seed=0)
    n, k, positions = len(test), test.n_arms, 3
    action = np.array([int(test.arms[a]) for a in test.action])  # OBD item ids
    assert list(test.arms) == [str(i) for i in range(k)]
    action_dist = np.broadcast_to(pi[None, :, None], (n, k, positions)).copy()
    pos0 = test.position - 1  # OBD positions 1..3 -> obp's 0..2
    q_obp = np.broadcast_to(q[:, 1:][None], (n, k, positions)).copy()
    common = dict(reward=test.reward, action=action, position=pos0, action_dist=action_dist,
                  pscore=test.pscore)
    want = {
        "ipw": InverseProbabilityWeighting().estimate_policy_value(**common),
        "snipw": SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**common),
        "dr": DoublyRobust().estimate_policy_value(**common, estimated_rewards_by_reg_model=q_obp),
    }
    for name, value in want.items():
        assert ours[name].value == pytest.approx(value, rel=1e-10, abs=1e-15), name
    # obp's bootstrap interval of IPW (other resamples) agrees with ours to within noise
    ci = InverseProbabilityWeighting().estimate_interval(**common, n_bootstrap_samples=1000,
                                                          random_state=0)
    lo, hi = ci["95.0% CI (lower)"], ci["95.0% CI (upper)"]
    big = estimate(test, pi, q, n_boot=1000, seed=0, estimators=("ipw",))["ipw"]
    width = hi - lo
    assert abs(big.lower - lo) <= 0.25 * width + 1e-12 and abs(big.upper - hi) <= 0.25 * width + 1e-12


def simulate(n, ctr, logging_pi, rng, positions=2, position_effect=(1.0, 0.6)):
    k = len(ctr)
    action = rng.choice(k, size=n, p=logging_pi)
    position = rng.integers(0, positions, size=n)
    p_click = ctr[action] * np.asarray(position_effect)[position]
    reward = (rng.random(n) < p_click).astype(float)
    return BanditLog(tuple(f"a{i}" for i in range(k)), action, position,
                     logging_pi[action] * 1.0, reward)


CTR = np.array([0.02, 0.05, 0.08, 0.03, 0.12, 0.04, 0.06, 0.01, 0.09, 0.07])
LOGGING = np.array([0.2, 0.15, 0.1, 0.1, 0.05, 0.1, 0.1, 0.1, 0.05, 0.05])


def true_value(pi, positions=2, position_effect=(1.0, 0.6)):
    return float(pi @ CTR) * float(np.mean(position_effect[:positions]))


TARGETS = {
    "best-arm greedy (eps 0.1)": np.full(10, 0.01) + 0.9 * (np.arange(10) == 4),
    "uniform": np.full(10, 0.1),
    "worst-arm heavy": np.where(np.arange(10) == 7, 0.55, 0.05),
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_intervals_cover_the_true_value_of_another_policy(name):
    pi = TARGETS[name]
    truth = true_value(pi)
    log = simulate(30_000, CTR, LOGGING, np.random.default_rng(11))
    assert abs(truth - float(LOGGING @ CTR) * 0.8) > 1e-3  # a different policy's value
    est = estimate(log, pi, n_boot=1000, seed=5)
    for e in est.values():
        assert e.lower <= truth <= e.upper, (name, e, truth)
        assert e.upper - e.lower < 0.03


def test_coverage_rate_over_replications():
    """95% intervals over 60 independent logs cover the truth in ~95% of them."""
    pi = TARGETS["best-arm greedy (eps 0.1)"]
    truth = true_value(pi)
    hits = {"ipw": 0, "snipw": 0, "dr": 0}
    reps = 60
    for r in range(reps):
        log = simulate(4000, CTR, LOGGING, np.random.default_rng(1000 + r))
        for name, e in estimate(log, pi, n_boot=300, seed=r).items():
            hits[name] += e.lower <= truth <= e.upper
    for name, h in hits.items():
        assert h / reps >= 0.85, (name, h)


def test_run_ope_on_obd(obd_log):
    header, results = run_ope(obd_log, [Thompson(), parse_policy("egreedy:epsilon=0.1")],
                              n_boot=200, seed=1)
    assert header["rows"] == 10_000 and header["clicks"] == 38 and header["arms"] == 80
    assert header["eval_rows"] == 5000
    for r in results:
        assert r.pi.sum() == pytest.approx(1.0)
        for e in r.estimates.values():
            assert e.lower <= e.value <= e.upper or e.lower == e.upper


def test_invalid_inputs():
    log = simulate(100, CTR, LOGGING, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        estimate(log, np.full(3, 1 / 3))
    with pytest.raises(ValueError, match="summing to 1"):
        estimate(log, np.full(10, 0.5))
    with pytest.raises(ValueError, match="unknown estimators"):
        estimate(log, np.full(10, 0.1), estimators=("magic",))
    with pytest.raises(ValueError, match="propensity"):
        BanditLog(("a",), np.array([0]), np.array([0]), np.array([0.0]), np.array([1.0]))
