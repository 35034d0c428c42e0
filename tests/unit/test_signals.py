"""Collaborative signals (stream.core.signals): oracles, order independence, pruning recall,
merging of partials, state round trip and forget."""

from __future__ import annotations

import io
import math
import zlib
from collections import defaultdict
from dataclasses import replace

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.signals import (
    CoVisitation,
    ItemPopularity,
    RecentItems,
    SignalParams,
    Signals,
    SignalView,
)

pytestmark = pytest.mark.unit

H = 3_600_000  # one hour (ms)
T0 = 1_700_000_000_000
Event = tuple[str, str, int, float]  # (user, item, ts, weight)


# -- oracles: the straightforward formulas --------------------------------------------------
def oracle_pop(events: list[Event], p: SignalParams, now: int) -> dict[str, tuple[float, float]]:
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for _, it, t, w in events:
        out[it][0] += w * 2.0 ** ((t - now) / p.pop_short_half_life_ms)
        out[it][1] += w * 2.0 ** ((t - now) / p.pop_long_half_life_ms)
    return {k: (v[0], v[1]) for k, v in out.items()}


def oracle_covis(events: list[Event], p: SignalParams, now: int) -> dict[str, dict[str, float]]:
    """Every unordered pair of one user's events within the window and with fewer than
    recent_n of the user's events strictly between them: earlier -> later at full weight,
    later -> earlier at covis_backward times it (full weight for equal ts)."""
    by_user: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for u, it, t, w in events:
        by_user[u].append((t, it, w))
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for evs in by_user.values():
        ts = sorted(e[0] for e in evs)
        for i in range(len(evs)):
            for j in range(i + 1, len(evs)):
                (t1, a, w1), (t2, b, w2) = sorted((evs[i], evs[j]))
                if a == b or t2 - t1 > p.covis_window_ms:
                    continue
                between = sum(1 for x in ts if t1 < x < t2)
                if between >= p.recent_n:
                    continue
                v = math.sqrt(w1 * w2) * 2.0 ** ((t2 - now) / p.covis_half_life_ms)
                out[a][b] = out[a].get(b, 0.0) + v
                back = v if t1 == t2 else v * p.covis_backward
                if back:
                    out[b][a] = out[b].get(a, 0.0) + back
    return out


def covis_now(cv: CoVisitation, p: SignalParams, now: int) -> dict[str, dict[str, float]]:
    out = {}
    for it in cv.items():
        row = cv.row(it)
        assert row is not None
        anchor, vals = row
        f = 2.0 ** (min(0, anchor - now) / p.covis_half_life_ms)
        out[it] = {k: v * f for k, v in vals.items()}
    return out


def assert_rows_close(got: dict[str, dict[str, float]], want: dict[str, dict[str, float]],
                      rel: float = 1e-9) -> None:
    assert set(got) == set(want)
    for it, row in want.items():
        assert set(got[it]) == set(row), it
        for k, v in row.items():
            assert got[it][k] == pytest.approx(v, rel=rel, abs=1e-300), (it, k)


def run(events: list[Event], p: SignalParams, cuts: list[int]) -> Signals:
    s = Signals(p)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(events))), len(events)]
    for lo, hi in zip(bounds, bounds[1:]):
        chunk = events[lo:hi]
        s.apply([e[0] for e in chunk], [e[1] for e in chunk],
                np.array([e[2] for e in chunk], dtype=np.int64),
                np.array([e[3] for e in chunk]))
    return s


# -- generated logs -------------------------------------------------------------------------
# Per user: non-decreasing ts with ties (groups of <= 4 events at one ts) and gaps around the
# 24 h window; users interleaved arbitrarily; arbitrary batch cuts.
P_SMALL = SignalParams(recent_n=3, covis_top_m=1000, covis_capacity=1000,
                       covis_window_ms=24 * H, covis_half_life_ms=10 * H,
                       pop_short_half_life_ms=2 * H, pop_long_half_life_ms=20 * H)

user_log = st.lists(
    st.tuples(st.sampled_from([0, 0, H, 5 * H, 23 * H, 30 * H]),  # gap to the previous group
              st.lists(st.tuples(st.integers(0, 7), st.sampled_from([1.0, 2.0, 4.0, 8.0])),
                       min_size=1, max_size=4)),
    min_size=1, max_size=6)


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[Event], list[int]]:
    per_user: list[list[Event]] = []
    for u in range(draw(st.integers(1, 4))):
        t = T0 + draw(st.integers(0, 3)) * H
        evs: list[Event] = []
        for gap, group in draw(user_log):
            t += gap + (1 if gap == 0 and evs else 0)  # gap 0: next ms (distinct groups)
            evs.extend((f"u{u}", f"i{i}", t, w) for i, w in group)
        per_user.append(evs)
    # Interleave users keeping each user's own order.
    order = draw(st.permutations([k for k, evs in enumerate(per_user) for _ in evs]))
    pos = [0] * len(per_user)
    events: list[Event] = []
    for k in order:
        events.append(per_user[k][pos[k]])
        pos[k] += 1
    cuts = draw(st.lists(st.integers(0, len(events)), max_size=5))
    return events, cuts


@pytest.mark.parametrize("backward", [1.0, 0.5, 0.0])
@settings(derandomize=True, deadline=None, max_examples=150)
@given(logs())
def test_incremental_equals_oracle_for_any_batching(backward: float,
                                                    log: tuple[list[Event], list[int]]) -> None:
    events, cuts = log
    p = replace(P_SMALL, covis_backward=backward)  # 1: symmetric; < 1: directed
    s = run(events, p, cuts)
    now = max(e[2] for e in events) + 2 * H
    want = oracle_pop(events, p, now)
    short, long = s.popularity.get(list(want), now)
    for k, it in enumerate(want):
        assert short[k] == pytest.approx(want[it][0], rel=1e-9)
        assert long[k] == pytest.approx(want[it][1], rel=1e-9)
    got = covis_now(s.covis, p, now)
    assert_rows_close({k: v for k, v in got.items() if v}, oracle_covis(events, p, now))


def _canonical(s: Signals, now: int) -> tuple[object, ...]:
    p = s.params
    items = sorted(s.popularity.items())
    short, long = s.popularity.get(items, now)
    recent = {u: s.recent.get(u, 10**6) for u in s.recent.users()}
    return items, short, long, recent, covis_now(s.covis, p, now)


@settings(derandomize=True, deadline=None, max_examples=100)
@given(logs(), st.randoms(use_true_random=False))
def test_order_within_equal_ts_does_not_matter(log: tuple[list[Event], list[int]],
                                               rnd: object) -> None:
    events, cuts = log
    # Permute each user's events within its equal-ts groups (and re-interleave users).
    groups: dict[tuple[str, int], list[Event]] = defaultdict(list)
    for e in events:
        groups[(e[0], e[2])].append(e)
    for g in groups.values():
        rnd.shuffle(g)  # type: ignore[attr-defined]
    taken: dict[tuple[str, int], int] = defaultdict(int)
    permuted = []
    for e in events:
        key = (e[0], e[2])
        permuted.append(groups[key][taken[key]])
        taken[key] += 1
    now = max(e[2] for e in events) + H
    a = _canonical(run(events, P_SMALL, cuts), now)
    b = _canonical(run(permuted, P_SMALL, [len(events) - c for c in cuts]), now)
    assert a[0] == b[0] and a[3] == b[3]
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-12)
    assert_rows_close(a[4], b[4], rel=1e-12)  # type: ignore[arg-type]


# -- pruned co-visitation vs the exact oracle -------------------------------------------------
def zipf_log(n_users: int = 1000, n_items: int = 1500, seed: int = 0, topics: int = 10,
             a: float = 0.8) -> list[Event]:
    """Sessions of 4-14 events 0-10 min apart, items from one of ``topics`` topics with
    Zipf(``a``) popularity within the topic; sessions 2-6 days apart; one global ts order."""
    rng = np.random.default_rng(seed)
    per = n_items // topics
    zipf = 1.0 / np.arange(1, per + 1) ** a
    zipf /= zipf.sum()
    events: list[Event] = []
    for u in range(n_users):
        t = T0 + int(rng.integers(0, 5 * 86_400_000))
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(4, 15))
            ts = t + np.cumsum(rng.integers(0, 600_000, n))
            items = int(rng.integers(0, topics)) * per + rng.choice(per, size=n, p=zipf)
            ws = rng.choice([1.0, 2.0, 4.0, 8.0], size=n, p=[0.6, 0.25, 0.1, 0.05])
            events.extend((f"u{u}", f"i{i}", x, w)
                          for i, x, w in zip(items.tolist(), ts.tolist(), ws.tolist()))
            t = int(ts[-1]) + int(rng.integers(2, 7)) * 86_400_000
    events.sort(key=lambda e: e[2])
    return events


def top_m_recall(got: dict[str, list[str]], exact: dict[str, dict[str, float]], m: int,
                 only: set[str] | None = None) -> float:
    """Mean over items of |got top-M that reach the exact M-th value| / min(M, row size)."""
    recalls = []
    for it, row in exact.items():
        if only is not None and it not in only:
            continue
        vals = sorted(row.values(), reverse=True)
        kth = vals[min(m, len(vals)) - 1] * (1 - 1e-9)
        hits = sum(1 for k in got.get(it, [])[:m] if row.get(k, 0.0) >= kth)
        recalls.append(hits / min(m, len(vals)))
    return float(np.mean(recalls))


M = 10
# Documented bound.  On zipf_log() (17.8k events, 1,492 items, 701 of whose exact rows hold
# more than 4*M neighbours) rows pruned to capacity 4*M keep 99.2 % of the exact top-M
# neighbours over all items and 98.3 % over the overflowed ones (measured 2025, this code);
# the bounds leave a margin for other seeds.
RECALL_ALL, RECALL_PRUNED = 0.97, 0.95


def test_pruned_covis_top_m_recall_against_exact_oracle() -> None:
    events = zipf_log()
    p = SignalParams(covis_top_m=M, covis_capacity=4 * M)
    s = run(events, p, list(range(500, len(events), 500)))
    now = events[-1][2]
    exact = oracle_covis(events, p, now)
    got = {it: [k for k, _ in s.covis.neighbours(it, now, M)] for it in s.covis.items()}
    overflowed = {it for it, row in exact.items() if len(row) > 4 * M}
    assert len(overflowed) > 500  # the test exercises pruning
    r_all = top_m_recall(got, exact, M)
    r_pruned = top_m_recall(got, exact, M, overflowed)
    assert r_all >= RECALL_ALL, f"top-{M} recall {r_all:.3f} over {len(exact)} items"
    assert r_pruned >= RECALL_PRUNED, f"top-{M} recall {r_pruned:.3f} over {len(overflowed)}"
    assert max(len(s.covis.row(it)[1]) for it in s.covis.items()) <= 4 * M  # type: ignore[index]


# -- merging partials in the view --------------------------------------------------------------
def partition_of(user: str, n: int) -> int:
    return zlib.crc32(user.encode()) % n


def test_view_merges_partitions_like_one_partition() -> None:
    events = zipf_log(n_users=300, n_items=600, seed=1)
    now = events[-1][2] + 3_600_000
    big = SignalParams(covis_top_m=10_000, covis_capacity=10_000)
    n_parts = 3
    parts = [Signals(big) for _ in range(n_parts)]
    single = Signals(big)
    for lo in range(0, len(events), 400):
        chunk = events[lo:lo + 400]
        single.apply([e[0] for e in chunk], [e[1] for e in chunk], [e[2] for e in chunk],
                     [e[3] for e in chunk])
        for k in range(n_parts):
            sub = [e for e in chunk if partition_of(e[0], n_parts) == k]
            parts[k].apply([e[0] for e in sub], [e[1] for e in sub], [e[2] for e in sub],
                           [e[3] for e in sub])
    merged, one = SignalView(big), SignalView(big)
    for k in range(n_parts):
        assert parts[k].publish(merged, k) > 0
    single.publish(one, 0)
    items = sorted(single.popularity.items())
    assert sorted(merged.items()) == items
    for a, b in zip(merged.popularity(items, now), one.popularity(items, now)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_array_equal(merged.counts(items), one.counts(items))
    assert [i for i, _ in merged.trending(now, 20)] == [i for i, _ in one.trending(now, 20)]
    assert [i for i, _ in merged.popular(now, 20)] == [i for i, _ in one.popular(now, 20)]
    exact = oracle_covis(events, big, now)
    got = {it: dict(merged.neighbours(it, now, 10_000)) for it in exact}
    assert_rows_close(got, exact)

    # Re-putting partials (replays, rebalances) replaces and never adds.
    before = merged.popularity(items, now)
    nb_before = merged.neighbours(items[0], now)
    for k in range(n_parts):
        for it in parts[k].popularity.items():
            merged.put_pop(k, it, parts[k].popularity.partial(it))
        for it in parts[k].covis.items():
            merged.put_covis(k, it, parts[k].covis.partial(it))
    for x, y in zip(merged.popularity(items, now), before):
        np.testing.assert_allclose(x, y, rtol=1e-12)
    nb_after = merged.neighbours(items[0], now)
    assert [k for k, _ in nb_after] == [k for k, _ in nb_before]
    assert [v for _, v in nb_after] == pytest.approx([v for _, v in nb_before], rel=1e-12)

    # With partials truncated to the top M, the merged top M still matches the oracle.
    small = SignalParams(covis_top_m=M, covis_capacity=4 * M)
    view = SignalView(small)
    for k in range(n_parts):
        sub = [e for e in events if partition_of(e[0], n_parts) == k]
        run(sub, small, list(range(400, len(sub), 400))).publish(view, k)
    got_m = {it: [nb for nb, _ in view.neighbours(it, now, M)] for it in exact}
    assert top_m_recall(got_m, exact, M) >= RECALL_ALL - 0.05


def test_view_put_replaces_and_none_deletes() -> None:
    p = SignalParams()
    v = SignalView(p)
    v.put_pop(0, "a", (T0, 2.0, 3.0, 2))
    v.put_pop(0, "a", (T0, 2.0, 3.0, 2))
    v.put_pop(1, "a", (T0 - int(p.pop_short_half_life_ms), 4.0, 0.0, 1))
    short, long = v.popularity(["a", "zz"], T0)
    assert short.tolist() == [pytest.approx(4.0), 0.0] and long.tolist() == [3.0, 0.0]
    assert v.counts(["a", "zz"]).tolist() == [3, 0]
    v.put_pop(1, "a", None)
    assert v.popularity(["a"], T0)[0].tolist() == [2.0]
    v.put_covis(0, "a", (T0, ["b", "c"], [2.0, 1.0]))
    v.put_covis(1, "a", (T0, ["c"], [5.0]))
    v.put_covis(1, "a", (T0, ["c"], [5.0]))
    assert v.neighbours("a", T0) == [("c", 6.0), ("b", 2.0)]
    v.put_covis(1, "a", None)
    assert v.neighbours("a", T0, 1) == [("b", 2.0)]
    with pytest.raises(ValueError):
        v.extend([("nope", 0, "a", None)])


# -- state, forget, changes -------------------------------------------------------------------
def _flat(state: dict[str, object], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = np.asarray(v)
    return out


def _unflat(flat: dict[str, np.ndarray]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, v in flat.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[last] = v.tolist() if v.dtype.kind == "U" else v  # type: ignore[index]
    return out


def test_state_round_trip_through_npz_without_pickle() -> None:
    events = zipf_log(n_users=80, n_items=300, seed=2)
    half = len(events) // 2
    p = SignalParams(recent_n=5, covis_top_m=5, covis_capacity=20)
    whole = run(events, p, list(range(200, len(events), 200)))
    first = run(events[:half], p, list(range(200, half, 200)))
    buf = io.BytesIO()
    np.savez(buf, **_flat(first.state()))
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        restored = Signals.from_state(_unflat({k: z[k] for k in z.files}), p)
    assert _flat(restored.state()).keys() == _flat(first.state()).keys()
    rest = events[half:]
    bounds = [0, *range(200, len(rest), 200), len(rest)]
    for lo, hi in zip(bounds, bounds[1:]):
        c = rest[lo:hi]
        restored.apply([e[0] for e in c], [e[1] for e in c], [e[2] for e in c],
                       [e[3] for e in c])
    now = events[-1][2]
    a, b = _canonical(whole, now), _canonical(restored, now)
    # Batch boundaries differ after the restore (pruning may differ), so compare the parts
    # that do not depend on them exactly and the co-visitation top neighbours loosely.
    assert a[0] == b[0] and a[3] == b[3]
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-12)
    # Without any pruning the round trip is exact.
    pb = SignalParams(recent_n=5)
    w2 = run(events, pb, [half])
    f2 = run(events[:half], pb, [])
    r2 = Signals.from_state(f2.state(), pb)
    c = events[half:]
    r2.apply([e[0] for e in c], [e[1] for e in c], [e[2] for e in c], [e[3] for e in c])
    assert_rows_close(covis_now(r2.covis, pb, now), covis_now(w2.covis, pb, now), rel=1e-12)


def test_forget_erases_the_user() -> None:
    p = SignalParams(recent_n=2)
    s = Signals(p)
    s.apply(["u", "u", "v"], ["a", "b", "a"], [T0, T0 + 1, T0 + 2], ["view", "click", "view"])
    assert [e[1] for e in s.recent.get("u")] == ["a", "b"]
    assert s.erase("u") and not s.erase("u")
    assert "u" not in s.recent and s.recent.get("u") == []
    assert "u" not in s.state()["recent"]["users"]
    s.take_changed()
    s.apply(["u"], ["c"], [T0 + 3], ["view"])  # nothing left to pair with
    assert s.covis.row("c") is None
    assert s.recent.get("u") == [(T0 + 3, "c", 1.0)]


def test_take_changed_partials_and_skipped_events() -> None:
    s = Signals(SignalParams())
    n = s.apply(["u", "u", "u", "u"], ["a", None, "b", "c"], [T0, T0, T0 + 5, T0 + 6],
                ["view", "search", "purchase", "nope"])
    assert n == 2  # itemless and zero-weight events are skipped
    pop, cov = s.take_changed()
    assert pop == {"a", "b"} and cov == {"a", "b"}
    assert s.take_changed() == (set(), set())
    assert s.popularity.partial("b") == (T0 + 5, 8.0, 8.0, 1)
    anchor, nbs, vals = s.covis.partial("a")  # type: ignore[misc]
    assert (anchor, nbs) == (T0 + 5, ["b"]) and vals[0] == pytest.approx(math.sqrt(8.0))
    assert s.covis.partial("zz") is None and s.popularity.partial("zz") is None
    # Partials survive JSON (tuples come back as lists) exactly.
    v, w = SignalView(), SignalView()
    for it in ("a", "b"):
        v.put_pop(0, it, s.popularity.partial(it))
        w.put_pop(0, it, orjson.loads(orjson.dumps(s.popularity.partial(it))))
        v.put_covis(0, it, s.covis.partial(it))
        w.put_covis(0, it, orjson.loads(orjson.dumps(s.covis.partial(it))))
    assert v.popularity(["a", "b"], T0 + 9)[0].tolist() == w.popularity(["a", "b"], T0 + 9)[0].tolist()
    assert v.neighbours("a", T0 + 9) == w.neighbours("a", T0 + 9)


def test_params_validated() -> None:
    with pytest.raises(ValueError):
        SignalParams(recent_n=0)
    with pytest.raises(ValueError):
        SignalParams(covis_top_m=10, covis_capacity=5)
    with pytest.raises(ValueError):
        SignalParams(pop_short_half_life_ms=0)
    with pytest.raises(ValueError):
        SignalParams(weights={"view": -1.0})
    assert SignalParams(recent_n=5).recent_cap == 20
    with pytest.raises(ValueError):
        Signals().apply(["u"], ["a"], [T0], [float("nan")])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="covis_backward"):
            SignalParams(covis_backward=bad)
    from stream.core.errors import ConfigError
    from stream.settings import Settings

    assert Settings.from_env({"PROFILES_SIGNALS_COVIS_BACKWARD": "0.5"}).signal_params() \
        .covis_backward == 0.5
    with pytest.raises(ConfigError, match="signals_covis_backward"):
        Settings.from_env({"PROFILES_SIGNALS_COVIS_BACKWARD": "2"})


def test_components_usable_alone() -> None:
    p = SignalParams(recent_n=2)
    pop = ItemPopularity(p)
    pop.apply(["a", "a"], [T0, T0 + int(p.pop_short_half_life_ms)], [1.0, 1.0])
    short, _ = pop.get(["a"], T0 + int(p.pop_short_half_life_ms))
    assert short[0] == pytest.approx(1.5)
    r = RecentItems(p)
    pairs = r.apply(["u"] * 3, ["a", "b", "c"], [T0, T0 + 1, T0 + 2], [1.0, 1.0, 1.0])
    assert sorted(zip(pairs.left, pairs.right)) == [("a", "b"), ("a", "c"), ("b", "c")]
    pairs = r.apply(["u"], ["d"], [T0 + 3], [1.0])  # a has b, c strictly between: 2 >= N
    assert sorted(zip(pairs.left, pairs.right)) == [("b", "d"), ("c", "d")]
    assert [e[1] for e in r.get("u")] == ["c", "d"]


def test_view_is_bit_identical_whatever_the_arrival_order() -> None:
    p = SignalParams()
    puts = [(k, "a", (T0 - 1000 * k, 0.1 * (k + 1), 0.3 / (k + 1), k + 1)) for k in range(5)]
    cputs = [(k, "a", (T0 - 7 * k, ["b", "c", "d"], [0.1 * k, 0.7 / (k + 1), 1.0 / 3]))
             for k in range(5)]
    views = []
    for order in (range(5), reversed(range(5)), [2, 0, 4, 1, 3]):
        v = SignalView(p)
        for k in order:
            v.put_pop(*puts[k])
            v.put_covis(*cputs[k])
        views.append(v)
    ref = views[0]
    assert ref.newest_ts() == T0 and SignalView(p).newest_ts() is None
    for v in views[1:]:
        for x, y in zip(v.popularity(["a"], T0 + 5), ref.popularity(["a"], T0 + 5)):
            assert x.tolist() == y.tolist()
        assert v.neighbours("a", T0 + 5) == ref.neighbours("a", T0 + 5)


def test_view_reads_local_partitions_live_and_detach_freezes_them() -> None:
    p = SignalParams()
    s, other = Signals(p), Signals(p)
    s.apply(["u", "u"], ["a", "b"], [T0, T0 + 1], ["view", "view"])
    other.apply(["w", "w"], ["a", "c"], [T0, T0 + 1], ["view", "click"])
    v = SignalView(p)
    assert s.publish(v, 0) == 2
    for it in ("a", "c"):
        v.put_covis(1, it, other.covis.partial(it))
    assert v.partitions() == {0, 1}
    assert dict(v.neighbours("a", T0 + 1)) == pytest.approx({"b": 1.0, "c": math.sqrt(2.0)})
    s.apply(["u"], ["c"], [T0 + 2], ["purchase"])
    s.publish(v, 0)  # the batch step's put_local: the live row is read at the next read
    got = dict(v.neighbours("a", T0 + 2))
    assert got["c"] == pytest.approx(math.sqrt(2.0) + math.sqrt(8.0))
    v.detach(0)  # partition 0 moved away: what it said last stays until republished
    s.apply(["u"], ["c"], [T0 + 3], ["purchase"])
    assert dict(v.neighbours("a", T0 + 3))["c"] == pytest.approx(got["c"])
    v.put_covis(0, "a", None)
    assert dict(v.neighbours("a", T0 + 3)) == pytest.approx({"c": math.sqrt(2.0)})


def test_late_event_pairs_with_what_is_kept() -> None:
    p = SignalParams(recent_n=2)
    r = RecentItems(p)
    r.apply(["u"] * 3, ["a", "b", "c"], [T0, T0 + 10, T0 + 20], [1.0, 1.0, 4.0])
    pairs = r.apply(["u"], ["x"], [T0 + 15], [1.0])  # late: between b and c
    got = sorted(zip(pairs.left, pairs.right, pairs.ts, pairs.weight))
    # every kept event with < 2 events strictly between it and the late one, at max(ts)
    # the earlier event is on the left (x is before c)
    assert got == [("a", "x", T0 + 15, 1.0), ("b", "x", T0 + 15, 1.0), ("x", "c", T0 + 20, 2.0)]
    assert [e[1] for e in r.get("u")] == ["x", "c"]
