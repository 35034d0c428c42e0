"""Issue 13's MovieLens measurements on small logs: the short-history cut ("first k" = the first
k distinct visible timestamps), ``--cold-only`` with differences against popularity, the
expected intra-list diversity against brute force, the multi-interest rows (interests applied
as the profile is, the served lists, paired CIs) and the CLI's errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder import HashingEncoder
from stream.cli import main
from stream.core.interests import InterestParams, InterestTable, allocate_quotas
from stream.core.profile import ProfileParams
from stream.eval import hybrid_eval, interests_eval
from stream.eval.data import ColdParams, SplitParams, Visibility, cold_visibility, make_queries
from stream.eval.diversity import expected_ild, list_ild, unit_rows
from stream.eval.replay import Step, StreamState
from stream.eval.run import EvalConfig, evaluate
from tests.unit.test_eval_split import load, synthetic, write

pytestmark = pytest.mark.unit


# ------------------------------------------------------------- "first k distinct timestamps"

def _hand_log() -> tuple[list[dict], list[dict]]:
    items = [{"item_id": f"i{k}", "title": f"item {k}", "category": "c"} for k in range(10)]
    steps = [(100, ["i1", "i2"]), (200, ["i4"]), (300, ["i3"]), (400, ["i5", "i6", "i1"]),
             (500, ["i7"]), (600, ["i8", "i9"]), (700, ["i0"]), (800, ["i2"])]
    events = [{"event_id": f"e{t}-{it}", "user_id": "u0", "type": "view", "ts": t,
               "item_id": it} for t, its in steps for it in its]
    return items, events


# one catalogue item held out (seed 0 draws i4: asserted below), every user a cold test user
HAND = ColdParams(item_frac=0.01, user_frac=1.0, val_item_frac=0.0, val_user_frac=0.0, seed=0)


def _cases(tmp: Path, items: list[dict], events: list[dict]) -> dict[str, list]:
    ev = load(tmp, items, events)
    vis, wanted, _ = cold_visibility(ev, HAND)
    assert {ev.item_ids[r] for r in ev.row[~vis.visible].tolist()} == {"i4"}
    q = make_queries(ev, vis, wanted)
    out: dict[str, list] = {}
    for i in range(len(q)):
        hist = ev.by_user[int(q.user[i])]
        hist = hist[(ev.ts[hist] < q.ts[i]) & vis.visible[hist]]
        out[q.label[i]] = [int(q.ts[i]), sorted(ev.item_ids[r] for r in q.new[i].tolist()),
                           sorted({int(t) for t in ev.ts[hist].tolist()})]
    return out


def test_short_history_cut_is_the_first_k_distinct_visible_timestamps(tmp_path: Path) -> None:
    items, events = _hand_log()
    got = _cases(tmp_path / "a", items, events)
    # visible distinct ts: 100, 300, 400, 500, 600, 700, 800 (200 holds only the hidden i4);
    # users_k: the items at the (k+1)-th, history = the first k; i1 at 400 is a repeat
    assert got == {"users_1": [300, ["i3"], [100]],
                   "users_3": [500, ["i7"], [100, 300, 400]],
                   "users_5": [700, ["i0"], [100, 300, 400, 500, 600]]}
    # equal timestamps are one unordered step: event ids permuted, file order reversed
    ids = [e["event_id"] for e in events]
    perm = np.random.default_rng(1).permutation(len(ids)).tolist()
    shuffled = [dict(e, event_id=ids[j]) for e, j in zip(events, perm)][::-1]
    assert _cases(tmp_path / "b", items, shuffled) == got


# ------------------------------------------------------------------------------ --cold-only

@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    items, events = synthetic(n_users=40, n_items=60, per_user=30, seed=11)
    return write(tmp_path_factory.mktemp("log"), items, events)


def _eval(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["eval", "--json", "--encoder", "hashing", "--bootstrap", "40",
                 "--no-sequence", *args]) == 0
    out: dict = json.loads(capsys.readouterr().out)
    return out


def test_cold_only_reports_differences_against_popularity(log, capsys) -> None:
    ep, ip = log
    common = ["--events", str(ep), "--items", str(ip), "--methods",
              "popularity,recent_pop_7d,covis,content_untuned"]
    cold = _eval(capsys, *common, "--cold-only")
    assert cold["methods"] == {} and cold["n"] == 0 and "skipped" in cold["protocol"]["main_run"]
    full = _eval(capsys, *common)
    for k in (1, 3, 5):
        d = cold["cold"][f"users_{k}"]
        assert d["n"] > 0
        for m in ("recent_pop_7d", "covis", "content_untuned"):
            diff = d["differences"][f"{m} - popularity"]["recall@20"]
            assert diff["mean"] == pytest.approx(
                d["methods"][m]["recall@20"] - d["methods"]["popularity"]["recall@20"], abs=2e-6)
            assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
        # the cold run does not depend on the main run for these methods
        assert d["methods"] == full["cold"][f"users_{k}"]["methods"]


def test_cli_errors(log, capsys) -> None:
    ep, ip = log
    base = ["eval", "--events", str(ep), "--items", str(ip), "--encoder", "hashing"]
    with pytest.raises(SystemExit) as exc:
        main([*base, "--cold-only", "--no-cold"])
    assert exc.value.code == 2 and "nothing to evaluate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--interests", "--interests-threshold", "1.5"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "--interests-threshold" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ diversity

def test_ild_hand_computed() -> None:
    emb = unit_rows(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]))
    c = 1 / np.sqrt(2)
    # served top 3 of items 0, 1, 2 (item 3 below): pairs 0-1, 0-2, 1-2
    want = ((1 - 0.0) + (1 - c) + (1 - c)) / 3
    assert expected_ild(np.array([3.0, 2.0, 1.0, 0.0]), emb, top=3) == pytest.approx(want)
    assert list_ild(emb[:3]) == pytest.approx(want)
    # item 3 tied with item 2 at the cut: each served with probability 1/2
    alt = (1.0 + 2.0 + 1.0) / 3  # items 0, 1, 3: cos(0, 3) = -1 -> distance 2
    got = expected_ild(np.array([3.0, 2.0, 1.0, 1.0]), emb, top=3)
    assert got == pytest.approx((want + alt) / 2)
    # excluded and non-candidate items are never served
    assert expected_ild(np.array([3.0, 2.0, 9.0, 1.0]), emb,
                        excluded=np.array([False, False, True, False]), top=3) == pytest.approx(
        list_ild(emb[[0, 1, 3]]))
    assert np.isnan(expected_ild(np.array([1.0, -np.inf, -np.inf, -np.inf]), emb, top=3))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 9), st.integers(2, 6), st.integers(1, 3))
def test_ild_equals_the_mean_over_every_tie_order(seed: int, n: int, top: int, levels: int
                                                  ) -> None:
    rng = np.random.default_rng(seed)
    emb = unit_rows(rng.standard_normal((n, 4)))
    scores = rng.integers(0, levels, n).astype(np.float64)  # many ties
    scores[rng.random(n) < 0.2] = -np.inf
    excluded = rng.random(n) < 0.2
    ok = np.flatnonzero(np.isfinite(scores) & ~excluded)
    length = min(top, len(ok))
    got = expected_ild(scores, emb, excluded, top)
    if length < 2:
        assert np.isnan(got)
        return
    # brute force: every order of the candidates that sorts scores descending, equally likely
    vals = []
    groups = [list(g) for _, g in itertools.groupby(sorted(ok.tolist(), key=lambda i: -scores[i]),
                                                    key=lambda i: -scores[i])]
    for combo in itertools.product(*(itertools.permutations(g) for g in groups)):
        served = [i for g in combo for i in g][:length]
        vals.append(list_ild(emb[served]))
    assert got == pytest.approx(float(np.mean(vals)), abs=1e-9)


# ------------------------------------------------------------------------ multi-interest rows

def _setup(tmp: Path, seed: int = 4):
    items, events = synthetic(n_users=30, n_items=45, per_user=24, seed=seed)
    ev = load(tmp, items, events, SplitParams(0.2, 0.25))
    return ev, {"untuned": HashingEncoder(dim=32).encode(ev.texts)}


def test_interests_follow_the_profile_events_in_canonical_order(tmp_path: Path) -> None:
    ev, vectors = _setup(tmp_path)
    vis = Visibility.full(ev)
    ip = InterestParams(k=3, threshold=0.8)
    state = StreamState(ev, vis, profiles=vectors, profile_params=ProfileParams())
    rep = interests_eval.MultiContent(ip).attach(state)
    t = int(np.quantile(ev.ts, 0.7))
    state.advance(t)
    w = ProfileParams().weight_array(ev.types)
    checked = 0
    for u, name in enumerate(ev.users):  # oracle: each user alone, one event at a time
        pos = ev.by_user[u]
        pos = pos[(ev.ts[pos] < t) & (w[pos] > 0)]
        if len(pos) == 0:
            assert rep.table.get(name) is None
            continue
        table = InterestTable(32, ip)
        for p in pos.tolist():
            table.apply([name], ev.ts[[p]], w[[p]], vectors["untuned"][ev.row[[p]]])
        a, b = rep.table.raw(name), table.raw(name)
        assert a is not None and b is not None
        assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
        checked += 1
    assert checked > 10
    assert any(rep.table.count(n) > 1 for n in ev.users)  # the rule did split someone


def test_multi_content_rows_are_the_worker_rule(tmp_path: Path) -> None:
    ev, vectors = _setup(tmp_path)
    ip = InterestParams(k=3, threshold=0.8)
    state = StreamState(ev, Visibility.full(ev), profiles=vectors, profile_params=ProfileParams())
    multi = interests_eval.MultiContent(ip)
    rep = multi.attach(state)
    state.advance(int(ev.ts.max()) + 1)
    items = vectors["untuned"][: ev.n_items]
    seen = 0
    for u, name in enumerate(ev.users):
        it = rep.table.get(name)
        if it is None or len(it) < 2:
            continue
        excl = np.zeros(ev.n_items, dtype=bool)
        excl[:5] = True
        got = multi.rows(state, u, excl, 10, items @ state.profile("untuned", u))
        # brute force: interests by importance (slot on ties) each take their quota of best
        # non-excluded items (ties by id) that a more important one did not take
        want: list[tuple[int, float]] = []
        quotas = allocate_quotas(it.importance, 10)
        for i in sorted(range(len(it)), key=lambda i: (-it.importance[i], i)):
            s = items @ it.vectors[i]
            free = [r for r in range(ev.n_items) if not excl[r] and r not in dict(want)]
            free.sort(key=lambda r: (-float(s[r]), ev.item_ids[r]))
            want += [(r, float(s[r])) for r in free[: quotas[i]]]
        assert got == want
        assert not excl[[r for r, _ in got]].any() and len(got) == 10
        seen += 1
    assert seen > 3


def _run_interests(tmp: Path, k: int) -> dict:
    ev, vectors = _setup(tmp, seed=9)
    cfg = EvalConfig(n_boot=60, seed=2, cold=None, hybrid_sequence=False,
                     methods=("popularity", "content_untuned", "covis", "hybrid"))
    cfg.extra.update({n: b for n, b in hybrid_eval.builders().items() if n != "sasrec"})
    interests_eval.configure(cfg, ProfileParams(), k=k, threshold=0.8)
    out, _ = evaluate(ev, vectors, ProfileParams(), cfg)
    return out


def test_one_interest_is_the_single_vector_exactly(tmp_path: Path) -> None:
    """k = 1: every user has one interest, so the multi rows take the single path: every
    paired difference is exactly 0 with a CI of [0, 0] (a CI from unpaired resamples would
    not be)."""
    rep = _run_interests(tmp_path, k=1)["interests"]["main"]
    assert rep["interests_per_user"]["histogram"] == {"1": rep["users"]}
    for key in ("content_multi - content_single", "hybrid_multi - hybrid"):
        for metric, d in rep["differences"][key].items():
            assert d["mean"] == 0 and d["ci95"] == [0, 0], (key, metric)
    single = rep["methods"]["content_single"]
    assert single["ild@20"]["ci95"][0] < single["ild@20"]["mean"] < single["ild@20"]["ci95"][1]


def test_multi_interest_rows_and_report(tmp_path: Path) -> None:
    out = _run_interests(tmp_path, k=4)
    rep = out["interests"]["main"]
    assert set(rep["methods"]) == {"content_single", "content_multi", "hybrid", "hybrid_multi"}
    assert out["best_baseline"] in {"popularity", "content_untuned", "covis", "content_single",
                                    "content_multi"}  # a hybrid variant is no baseline
    assert rep["interests_per_user"]["mean"] > 1
    mem = rep["state_bytes_per_user"]  # fewer than k interests take fewer pool rows
    assert 0 < mem["mean"] <= mem["all_k"] and (mem["all_k"] - 9 - 12 * 4) % 4 == 0
    # the report's Recall@20 is the evaluator's (same cases, same expected-rank metric)
    for m in rep["methods"]:
        assert rep["methods"][m]["recall@20"]["mean"] == pytest.approx(
            out["methods"][m]["recall@20"], abs=1e-6)
    d = rep["differences"]["content_multi - content_single"]
    assert d["recall@20"]["mean"] == pytest.approx(
        rep["methods"]["content_multi"]["recall@20"]["mean"]
        - rep["methods"]["content_single"]["recall@20"]["mean"], abs=2e-6)
    assert d["ild@20"]["mean"] != 0  # the lists differ somewhere
    assert rep["methods"]["content_single"]["served_mean"] == 20
    assert rep["methods"]["content_multi"]["served_mean"] == 20  # distinct items
    cost = rep["cost_per_event"]
    assert cost["events"] > 0 and cost["interests_us"] > 0 and cost["profile_us"] > 0


def test_content_single_is_the_profile_top_20(tmp_path: Path) -> None:
    """The single row serves the profile's top 20 (history excluded): Recall@20 equals that of
    content_untuned, which ranks every item by the same scores, wherever the 20th is unique."""
    ev, vectors = _setup(tmp_path)
    st_ = StreamState(ev, Visibility.full(ev), profiles=vectors, profile_params=ProfileParams())
    t = int(np.quantile(ev.ts, 0.8))
    st_.advance(t)
    users = np.array([u for u in range(len(ev.users)) if st_.profile("untuned", u) is not None])
    hist = [ev.by_user[u][ev.ts[ev.by_user[u]] < t] for u in users.tolist()]
    items = [np.unique(ev.row[h[ev.is_item[h]]]) for h in hist]
    step = Step(np.arange(len(users)), users, t, hist, items)
    m = interests_eval.content_method("content_single", "untuned", None)
    s = m.score(st_, step, "new")
    for r, u in enumerate(users.tolist()):
        sims = vectors["untuned"][: ev.n_items] @ st_.profile("untuned", u)
        ok = np.setdiff1d(np.arange(ev.n_items), items[r])
        want = ok[np.argsort(-sims[ok], kind="stable")][:20]
        assert set(np.flatnonzero(np.isfinite(s[r])).tolist()) == set(want.tolist())
