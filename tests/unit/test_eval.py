"""Evaluation: metrics on hand-made cases, profiles = the stream's formula, a leak-free split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder.training.evaluate import (
    Cases,
    bootstrap,
    build_cases,
    metrics_from_ranks,
    popularity,
    ranks,
)
from encoder.training.finetune import training_examples
from encoder.training.logdata import load_log
from stream.core.profile import ProfileParams, ProfileTable

pytestmark = pytest.mark.unit


def write_log(tmp_path, n_users: int = 6, n_items: int = 12, per_user: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = [{"item_id": f"i{k}", "title": f"item {k}", "category": f"cat {k % 3}"}
             for k in range(n_items)]
    events, types = [], ["view", "click", "add_to_cart", "purchase"]
    for u in range(n_users):
        t = 1_000_000 + u
        for j in range(per_user):
            t += int(rng.integers(0, 3)) * 60_000  # ties in ts happen, as in MovieLens
            events.append({"event_id": f"e{u}-{j}", "user_id": f"u{u}", "type": types[j % 4],
                           "ts": t, "item_id": f"i{int(rng.integers(0, n_items))}"})
        events.append({"event_id": f"s{u}", "user_id": f"u{u}", "type": "search", "ts": 1_000_001,
                       "query": "a query"})
    rng.shuffle(events)  # files need not be sorted
    ip, ep = tmp_path / "items.jsonl", tmp_path / "events.jsonl"
    ip.write_text("".join(json.dumps(x) + "\n" for x in items))
    ep.write_text("".join(json.dumps(x) + "\n" for x in events))
    return ep, ip


def test_ranks_and_metrics_known_answers() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],   # target 2: rank 3
                       [0.9, 0.8, 0.7, 0.6, 0.5],   # target 2, items 0 and 1 seen: rank 1
                       [0.1, 0.5, 0.5, 0.5, 0.0],   # tie: catalogue order, target 3 -> rank 3
                       [0.0, 0.0, 0.0, 0.0, 0.0]])  # all tied, target 4 -> rank 5
    cases = Cases(np.array([2, 2, 3, 4]), np.zeros(4, np.int64),
                  [np.array([], np.int64), np.array([0, 1, 2]), np.array([], np.int64),
                   np.array([], np.int64)])
    rk = ranks(scores, cases)
    assert rk.tolist() == [3, 1, 3, 5]  # the target itself in the history is not excluded
    m = metrics_from_ranks(np.array([1, 3, 10, 11, 20, 21, 100]))
    assert m["recall@10"].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert m["recall@20"].tolist() == [1, 1, 1, 1, 1, 0, 0]
    np.testing.assert_allclose(m["ndcg@20"], [1, 0.5, 1 / np.log2(11), 1 / np.log2(12),
                                              1 / np.log2(21), 0, 0])
    np.testing.assert_allclose(m["mrr"], [1, 1 / 3, 0.1, 1 / 11, 0.05, 1 / 21, 0.01])
    # One score row for every case (popularity) ranks the same way.
    assert ranks(scores[0], cases).tolist() == [3, 1, 4, 5]


def test_bootstrap_paired_identical_methods() -> None:
    per = {"a": {"recall@20": np.array([1.0, 0, 1, 0, 1, 1])}}
    per["b"] = {"recall@20": per["a"]["recall@20"].copy()}
    per["c"] = {"recall@20": np.ones(6)}
    res = bootstrap(per, np.array([0, 0, 1, 1, 2, 3]), n_boot=200, seed=1,
                    pairs=[("b", "a"), ("c", "a")])
    assert res["methods"]["a"]["recall@20"]["mean"] == pytest.approx(4 / 6)
    d = res["differences"]["b - a"]["recall@20"]
    assert d["mean"] == 0 and d["ci95"] == [0, 0] and not d["excludes_0"]
    lo, hi = res["methods"]["a"]["recall@20"]["ci95"]
    assert lo <= 4 / 6 <= hi
    assert res["differences"]["c - a"]["recall@20"]["ci95"][0] >= 0


def test_profiles_use_the_stream_formula(tmp_path) -> None:
    log = load_log(*write_log(tmp_path))
    sp = log.split()
    params = ProfileParams(half_life_ms=120_000.0)
    vec = np.random.default_rng(3).standard_normal((len(log.texts), 8)).astype(np.float32)
    cases = build_cases(log, sp, "test", vec, params)
    k = 0
    for u in log.users:
        for j in range(sp.test_start[u.user], len(u.ids)):
            if not u.is_item[j]:
                continue
            table = ProfileTable(8, params)
            table.apply([u.user] * j, u.ts[:j], params.weight_array(u.types[:j]), vec[u.rows[:j]])
            np.testing.assert_allclose(cases.profiles[k], table.vector(u.user), atol=1e-5)
            assert cases.targets[k] == u.rows[j]
            k += 1
    assert k == len(cases.targets) > 0


@settings(derandomize=True, max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 30), st.sampled_from([0.1, 0.2, 0.3]))
def test_split_never_leaks_test_events(tmp_path_factory, seed, per_user, frac) -> None:
    tmp = tmp_path_factory.mktemp("log")
    log = load_log(*write_log(tmp, n_users=4, per_user=per_user, seed=seed))
    sp = log.split(frac, frac)
    train, val, test = (log.ids_of(sp, p) for p in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == sum(len(u.ids) for u in log.users)
    by_user = {u.user: u for u in log.users}
    for u in log.users:  # test = each user's latest events, validation just before
        assert set(u.ids[sp.test_start[u.user]:]) <= test and len(u.ids) - sp.test_start[u.user] >= 1
        assert sp.val_start[u.user] < sp.test_start[u.user]
        if sp.val_start[u.user] > 0:
            assert u.ts[sp.val_start[u.user] - 1] <= u.ts[sp.test_start[u.user]]
    # Fine-tuning examples: target and whole context are training events.
    for ui, j in training_examples(log, sp).tolist():
        u = log.users[ui]
        assert set(u.ids[: j + 1]) <= train, (u.user, j)
        assert by_user[u.user] is u
    # Popularity for the test ranking counts train + validation only.
    counts = popularity(log, sp, "val")
    assert counts.sum() == sum(int(u.is_item[: sp.test_start[u.user]].sum()) for u in log.users)


def test_bench_flop_count() -> None:
    from stream.bench.encoder import bert_flops

    # MiniLM-L6: ~2 x 10.6 M non-embedding weights per token + attention + pooler.
    f = bert_flops(32, 384, 1536, 6)
    weights = 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert f == 2 * 32 * weights + 6 * 4 * 32 * 32 * 384 + 2 * 384 * 384
    assert 0.68e9 < f < 0.70e9
