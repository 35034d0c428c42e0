"""Explanations as exact decompositions (stream.core.explain): content similarity over events,
co-visitation over seed items, a linear ranker's log-odds over features."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.errors import BadRequest, ConfigError
from stream.core.explain import (
    content_terms,
    covis_terms,
    interest_terms,
    linear_terms,
    profile_norm,
    split_content,
    split_covis,
)
from stream.core.hybrid import FEATURES, HybridParams, generate
from stream.core.interests import InterestParams, InterestTable
from stream.core.profile import ProfileParams, ProfileTable
from stream.core.ranker import default_ranker, linear_ranker
from stream.core.signals import SignalParams, Signals, SignalView
from stream.serve.explain import parse_explain
from stream.settings import Settings

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000
H = 7 * 86_400_000.0


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(events: list[tuple[int, np.ndarray, float]], x: np.ndarray) -> tuple[float, list[float]]:
    """Similarity of the normalised profile with x and each event's share, straight from the
    definition (no code under test)."""
    anchor = max(t for t, _, _ in events)
    parts = [w * 2.0 ** ((t - anchor) / H) * v for t, v, w in events]
    s = np.sum(parts, axis=0)
    norm = float(np.sqrt((s * s).sum()))
    return float(s @ x) / norm, [float(p @ x) / norm for p in parts]


@settings(derandomize=True, max_examples=30, deadline=None)
@given(n=st.integers(1, 30), held=st.integers(0, 10), seed=st.integers(0, 2**16))
def test_contributions_plus_remainder_are_the_similarity_and_the_remainder_is_what_is_missing(
        n: int, held: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 8
    vecs = _unit(rng, n + held, d)
    ts = (T0 + rng.integers(-20 * 86_400_000, 1, n + held)).tolist()
    ws = rng.choice([1.0, 2.0, 4.0, 8.0], n + held).tolist()
    all_events = [(int(t), v, float(w)) for t, v, w in zip(ts, vecs, ws)]
    cands = _unit(rng, 5, d)
    anchor = max(ts)
    total = np.sum([w * 2.0 ** ((t - anchor) / H) * v for t, v, w in all_events], axis=0)
    # the buffer holds the first n events; `held` more are in the profile only
    kept = [(int(ts[i]), f"i{i}", float(ws[i])) for i in range(n)]
    decay, contrib = content_terms(kept, vecs[:n], anchor, H, profile_norm(total), cands)
    for j, x in enumerate(cands):
        sim, shares = _brute(all_events, x)
        np.testing.assert_allclose(contrib[:, j], shares[:n], rtol=1e-9, atol=1e-12)
        top_n = max(1, n // 3)
        c = split_content(sim, kept, decay, contrib[:, j], top_n)
        listed = sum(e.contribution for e in c.top)
        assert math.isclose(listed + c.omitted + c.remainder, sim, abs_tol=1e-12)
        assert math.isclose(c.remainder, sum(shares[n:]), abs_tol=1e-9)
        assert len(c.top) == min(top_n, n) and c.omitted_events == n - len(c.top)
        got = [e.contribution for e in c.top]
        assert got == sorted(got, reverse=True)
        assert c.top[0].contribution == contrib[:, j].max()
    np.testing.assert_allclose(decay, [2.0 ** ((t - anchor) / H) for t, _, _ in kept])


def test_profile_norm_survives_tiny_sums() -> None:
    s = np.array([3e-310, 4e-310])  # subnormal: a naive norm loses digits
    assert math.isclose(profile_norm(s), 5e-310, rel_tol=1e-12)
    assert profile_norm(np.zeros(4)) == 0.0


def _view(events: list[tuple[str, str, int, str]]) -> tuple[Signals, SignalView]:
    sig = Signals(SignalParams())
    sig.apply([e[0] for e in events], [e[1] for e in events], [e[2] for e in events],
              [e[3] for e in events])
    view = SignalView(sig.params)
    sig.publish(view, 0)
    view.merge()
    return sig, view


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covis_terms_sum_to_the_covis_feature_generate_scored(seed: int) -> None:
    rng = np.random.default_rng(seed)
    types = ["view", "click", "add_to_cart", "purchase"]
    events = [(f"u{int(rng.integers(0, 15))}", f"i{int(rng.zipf(1.5) % 40)}",
               T0 + int(rng.integers(0, 6 * 3_600_000)), types[int(rng.integers(0, 4))])
              for _ in range(600)]
    sig, view = _view(events)
    now = max(e[2] for e in events)
    hp = HybridParams(seed_step_decay=0.9, covis_per_item=10)
    for user in ("u1", "u2", "u3"):
        recent = sig.recent.get(user)
        cands = generate(recent, [], view, now, hp)
        covis = dict(zip(cands.items, cands.features[:, FEATURES.index("covis_score")].tolist()))
        terms = covis_terms(recent, view.neighbours, now, hp, set(cands.items))
        assert terms, user
        mine = {it for _, it, _ in recent}
        for item, score in covis.items():
            got = terms.get(item, [])
            total, top, more, rest = split_covis(got, 3)
            # the same products in the same order: the number generate took log1p of (to
            # log1p's last bit)
            assert math.isclose(math.log1p(total), score, rel_tol=1e-14, abs_tol=1e-300), item
            assert math.isclose(sum(t.contribution for t in top) + rest, total, rel_tol=1e-12)
            assert len(top) == min(3, len(got)) and more == len(got) - len(top)
            # the seeds are the user's own recent items, each holding the candidate as a
            # neighbour with exactly the listed value
            for t in got:
                assert t.item in mine
                assert dict(view.neighbours(t.item, now, hp.covis_per_item))[item] == \
                    t.covis_weight
                assert t.contribution == t.seed_weight * t.covis_weight


def test_linear_terms_add_up_to_the_log_odds() -> None:
    rng = np.random.default_rng(5)
    for r in (default_ranker(), linear_ranker({"content_sim": 2.0, "pop_short": -1.0}, bias=0.5,
                                              mean={"pop_short": 1.0},
                                              scale={"pop_short": 2.0})):
        x = rng.standard_normal((4, len(r.features)))
        x[0, 0] = np.nan  # counts as the mean, as the ranker scores it
        for row in x:
            got = linear_terms(r, row)
            assert got is not None
            bias, terms = got
            assert math.isclose(bias + sum(v for _, v in terms),
                                float(r.decision_function(row[None, :])[0]), abs_tol=1e-12)
            nonzero = {f for f, w in zip(r.features, r.arrays["weights"])
                       if w != 0 and row[r.features.index(f)] != r.arrays["mean"][
                           r.features.index(f)] and not np.isnan(row[r.features.index(f)])}
            assert {f for f, _ in terms} == nonzero
            mags = [abs(v) for _, v in terms]
            assert mags == sorted(mags, reverse=True)


def test_the_explain_flag_and_setting_are_validated() -> None:
    assert parse_explain(None) is False and parse_explain("0") is False
    assert parse_explain("false") is False
    assert parse_explain("1") is True and parse_explain("true") is True
    for bad in ("yes", "2", ""):
        with pytest.raises(BadRequest, match="explain must be"):
            parse_explain(bad)
    assert Settings.from_env({}).explain_events == 5
    assert Settings.from_env({"PROFILES_EXPLAIN_EVENTS": "12"}).explain_events == 12
    for bad in ("0", "101"):
        with pytest.raises(ConfigError, match="explain_events must be in 1..100"):
            Settings.from_env({"PROFILES_EXPLAIN_EVENTS": bad})


@pytest.mark.parametrize("seed", [0, 1])
def test_interest_terms_split_the_profile_similarity_over_the_interests(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d, n = 16, 60
    centres = _unit(rng, 3, d)  # three tastes, so the user has several interests
    vecs = centres[rng.integers(0, 3, n)] + 0.3 * rng.standard_normal((n, d))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ts = np.sort(T0 + rng.integers(0, 30 * 86_400_000, n)).astype(np.int64)
    w = rng.choice([1.0, 2.0, 4.0], n)
    users = ["u"] * n
    pt = ProfileTable(d, ProfileParams(half_life_ms=H))
    it = InterestTable(d, InterestParams(k=4, threshold=0.5, half_life_ms=H))
    pt.apply(users, ts, w, vecs)
    it.apply(users, ts, w, vecs)
    raw, got = pt.raw("u"), it.get("u")
    assert raw is not None and got is not None and len(got) >= 2
    anchor, total = raw
    norm = profile_norm(total)
    imp = got.importance_at(anchor, H)
    for x in _unit(rng, 6, d):
        sim = float(total @ x) / norm
        cos, contrib = interest_terms(imp, got.means, norm, x)
        assert abs(float(contrib.sum()) - sim) < 6e-3  # the means are stored as int8 codes
        want = [float(m @ x) / float(np.linalg.norm(m)) for m in got.means.astype(np.float64)]
        np.testing.assert_allclose(cos, want, rtol=1e-9, atol=1e-12)
