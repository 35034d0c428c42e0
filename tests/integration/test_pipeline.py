"""The whole path on the real broker, a real worker process, real FAISS and the real encoder.

One worker consumes the generated log (1,000 users, 500 items, 20,000 events); then every
profile, bandit count and index entry is compared with the offline oracle.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items, replay
from tests.conftest import kafka, total_outcomes
from tests.oracle import oracle_bandit, oracle_profiles

pytestmark = pytest.mark.timeout(900)

DEFAULTS = Settings()


@pytest.fixture(scope="module")
def replayed(broker, dataset, tmp_path_factory):
    """A worker that has applied the whole generated log (shared by this module's tests)."""
    import uuid

    from stream.kafka.broker import free_port
    from stream.tools.runner import WorkerProcess

    ds, paths = dataset
    tag = uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("replayed")
    settings = Settings.from_env({}, bootstrap_servers=broker.bootstrap, state_dir=str(tmp / "state"),
                                 http_port=free_port(), session_timeout_s=6.0, encoder_dtype="fp32",
                                 events_topic=f"events-{tag}", items_topic=f"items-{tag}",
                                 dlq_topic=f"dlq-{tag}", group_id=f"g-{tag}")
    create_topics(kafka(broker.bootstrap), {settings.events_topic: settings.partitions,
                                     settings.items_topic: 1, settings.dlq_topic: 1})
    assert load_items(paths["items"], kafka(broker.bootstrap), topic=settings.items_topic,
                      progress=False).sent == len(ds.items)
    worker = WorkerProcess(settings, tmp / "worker.log").start()
    try:
        worker.wait_ready(240)
        sent = replay(paths["events"], kafka(broker.bootstrap), topic=settings.events_topic,
                      progress=False)
        assert sent.sent == len(ds.events) and sent.failed == 0
        worker.wait_for(lambda: total_outcomes(worker) == len(ds.events), 600,
                        "every event to reach a final outcome")
        yield worker
    finally:
        worker.kill()


def test_every_event_applied_once(replayed, dataset):
    ds, _ = dataset
    stats = replayed.stats()
    assert stats["events_applied"] == len(ds.events)
    assert stats.get("events_duplicate", 0) == 0 and stats.get("events_rejected", 0) == 0
    assert stats["users"] == len({e["user_id"] for e in ds.events})
    assert stats["items_index"] == len(ds.items)
    by_type = Counter(e["type"] for e in ds.events)
    samples = replayed.metrics()["profiles_events"]
    got: Counter = Counter()
    for s in samples:
        if s.name == "profiles_events_total" and s.labels["outcome"] == "applied":
            got[s.labels["type"]] += s.value
    assert got == {t: float(n) for t, n in by_type.items()}
    # one series per partition, so rate() stays right when partitions move between workers
    assert {s.labels["partition"] for s in samples} == {"0", "1", "2", "3"}


def test_profiles_equal_oracle(replayed, dataset, oracle_vectors):
    ds, _ = dataset
    item_vecs, query_vecs = oracle_vectors
    expected = oracle_profiles(ds.events, item_vecs, query_vecs, DEFAULTS.event_weight_map(),
                               DEFAULTS.half_life_ms)
    counts = Counter(e["user_id"] for e in ds.events)
    worst = 0.0
    for user, want in expected.items():
        body = replayed.json(f"/users/{user}/profile?vector=1")
        assert body["_status"] == 200, body
        got = np.asarray(body["vector"])
        worst = max(worst, float(np.max(np.abs(got - want))))
        assert body["events"] == counts[user]
    assert worst <= 1e-5, f"max abs difference to the oracle {worst:g}"


def test_bandit_counts_equal_groupby(replayed, dataset):
    ds, _ = dataset
    expected = oracle_bandit(ds.events, DEFAULTS.reward_weight_map())
    # an independent groupby, as a second opinion on the oracle itself
    views, clicks = Counter(), Counter()
    for e in ds.events:
        if e.get("item_id"):
            views[e["item_id"]] += e["type"] == "view"
            clicks[e["item_id"]] += e["type"] == "click"
    for arm, (imp, rew) in expected.items():
        assert (imp, rew) == (views[arm], clicks[arm])
        body = replayed.json(f"/arms/{arm}")
        if imp == 0 and rew == 0:
            assert body["_status"] == 404
            continue
        assert (body["impressions"], body["rewards"]) == (imp, rew), arm
        assert body["alpha"] == DEFAULTS.prior_alpha + rew
        assert body["beta"] == DEFAULTS.prior_beta + max(imp - rew, 0)


def test_each_user_is_its_own_nearest_neighbour(replayed, dataset):
    ds, _ = dataset
    users = sorted({e["user_id"] for e in ds.events})
    for user in users:
        body = replayed.json(f"/users/{user}/similar?k=3&include_self=1")
        hits = body["similar"]
        assert hits, user
        top = hits[0]
        if top["user_id"] != user:  # a tie within 1e-6 is acceptable
            own = [h for h in hits if h["user_id"] == user]
            assert own and abs(own[0]["score"] - top["score"]) <= 1e-6, (user, hits)
        else:
            assert math.isclose(top["score"], 1.0, abs_tol=1e-4)


def test_candidates_beat_popularity(replayed, dataset):
    """Recall@20 against the generator's true interests: ours vs the most popular items."""
    ds, _ = dataset
    category = {it["item_id"]: it["category"] for it in ds.items}
    popularity = Counter(e["item_id"] for e in ds.events if e.get("item_id"))
    purchased = defaultdict(set)
    for e in ds.events:
        if e["type"] == "purchase":
            purchased[e["user_id"]].add(e["item_id"])
    ranked_pop = [i for i, _ in popularity.most_common()]
    users = sorted(ds.interests)[::4]  # 250 users
    ours, pop = [], []
    for user in users:
        interests = set(ds.interests[user])
        body = replayed.json(f"/users/{user}/candidates?k=20")
        assert body["_status"] == 200
        cands = [c["item_id"] for c in body["candidates"]]
        assert len(cands) == 20 and len(set(cands)) == 20
        assert not set(cands) & purchased[user], "purchased items must be excluded"
        relevant = {i for i, c in category.items() if c in interests}
        denom = min(20, len(relevant))
        ours.append(sum(category[c] in interests for c in cands) / denom)
        top_pop = [i for i in ranked_pop if i not in purchased[user]][:20]
        pop.append(sum(category[c] in interests for c in top_pop) / denom)
    r_ours, r_pop = float(np.mean(ours)), float(np.mean(pop))
    print(f"Recall@20 vs true interests: candidates {r_ours:.3f}, popularity {r_pop:.3f}")
    assert r_ours > r_pop + 0.1


def test_http_endpoints(replayed, dataset):
    ds, _ = dataset
    user = ds.events[0]["user_id"]
    assert replayed.json("/healthz")["status"] == "ok"
    assert replayed.get("/readyz")[0] == 200
    body = replayed.json(f"/users/{user}/profile")
    assert body["_status"] == 200 and body["events"] >= 1 and body["top_categories"]
    category = {it["item_id"]: it["category"] for it in ds.items}
    touched = {category[e["item_id"]] for e in ds.events if e["user_id"] == user and e.get("item_id")}
    assert {c for c, _w in body["top_categories"]} <= touched
    missing = replayed.json("/users/nobody-at-all/profile")
    assert missing["_status"] == 404 and "error" in missing
    # no history: trending items (issue 11: "a user with no history gets trending candidates")
    cold = replayed.json("/users/nobody-at-all/candidates")
    assert cold["_status"] == 200 and cold["candidates"], cold
    assert all(c["sources"] == ["trending"] for c in cold["candidates"])
    assert replayed.json("/users/nobody-at-all/similar")["_status"] == 404
    assert replayed.json(f"/users/{user}/candidates?k=abc")["_status"] == 400
    assert replayed.json("/arms/no-such-arm")["_status"] == 404
    names = set(replayed.metrics())
    for name in ("profiles_events", "profiles_parked_events", "profiles_ingest_to_index_seconds",
                 "profiles_batch_size", "profiles_encoder_seconds", "profiles_encoder_errors",
                 "profiles_index_vectors", "profiles_dlq", "profiles_bandit_impressions",
                 "profiles_bandit_rewards", "profiles_consumer_lag"):
        assert name in names, name
    lat = replayed.metrics()["profiles_ingest_to_index_seconds"]
    count = [s.value for s in lat if s.name.endswith("_count")][0]
    assert count == len(ds.events)


def test_top_level_packages_are_ours():
    """`stream`, `encoder` and `index` are also names of unrelated PyPI packages."""
    from pathlib import Path

    import encoder
    import index
    import stream

    root = Path(__file__).resolve().parents[2]
    for mod in (stream, encoder, index):
        assert Path(mod.__file__).resolve().parent.parent == root, mod.__file__
