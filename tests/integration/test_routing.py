"""Two workers share the events partitions: any worker answers for any user, and look-alike
search sees every user (scatter-gather), equal to a brute-force search over all profiles."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream.kafka.clients import create_topics
from stream.settings import Settings
from stream.tools.replay import load_items
from tests.conftest import kafka
from tests.integration.test_faults import _send
from tests.oracle import oracle_bandit, oracle_profiles

pytestmark = pytest.mark.timeout(600)
DEFAULTS = Settings()


def _outcomes(workers):
    total = 0
    for w in workers:
        s = w.stats()
        total += sum(v for k, v in s.items() if k.startswith("events_"))
    return total


def test_any_worker_answers_and_lookalikes_are_complete(broker, topics, dataset, oracle_vectors,
                                                        start_worker):
    ds, paths = dataset
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: 4, topics["items_topic"]: 1,
                                     topics["dlq_topic"]: 1})
    load_items(paths["items"], kafka(broker.bootstrap), topic=topics["items_topic"], progress=False)
    a = start_worker()
    b = start_worker()
    a.wait_ready(240)
    b.wait_ready(240)
    # both own partitions before the data arrives
    a.wait_for(lambda: a.stats()["partitions"] and b.stats()["partitions"]
               and len(a.stats()["partitions"]) + len(b.stats()["partitions"]) == 4, 120,
               "the partitions to be shared")
    events = ds.events[:5000]
    assert _send(broker, topics["events_topic"],
                 [(e["user_id"].encode(), orjson.dumps(e)) for e in events]) == len(events)
    a.wait_for(lambda: _outcomes([a, b]) == len(events), 300, "all outcomes on the two workers")
    owned_a = {int(p) for p in a.stats()["partitions"]}
    owned_b = {int(p) for p in b.stats()["partitions"]}
    assert owned_a and owned_b and not owned_a & owned_b

    item_vecs, query_vecs = oracle_vectors
    expected = oracle_profiles(events, item_vecs, query_vecs, DEFAULTS.event_weight_map(),
                               DEFAULTS.half_life_ms)
    users = sorted(expected)
    served_by = {}
    for user in users[::10]:
        for w in (a, b):  # either worker answers, forwarding to the owner when needed
            body = w.json(f"/users/{user}/profile?vector=1")
            assert body["_status"] == 200, (user, body)
            assert np.max(np.abs(np.asarray(body["vector"]) - expected[user])) <= 1e-5
            served_by[user] = body["partition"]
    assert {p in owned_a for p in served_by.values()} == {True, False}, "both owners served"

    # look-alikes over everyone, from either worker, equal brute force over all profiles
    matrix = np.stack([expected[u] for u in users])
    for user in users[::50]:
        scores = matrix @ expected[user]
        order = [users[i] for i in np.argsort(-scores) if users[i] != user][:10]
        for w in (a, b):
            hits = w.json(f"/users/{user}/similar?k=10")["similar"]
            got = [h["user_id"] for h in hits]
            assert len(got) == 10
            # equal up to ties within 1e-6
            want_scores = np.sort(scores[[users.index(u) for u in order]])[::-1]
            got_scores = np.array([h["score"] for h in hits])
            assert np.allclose(got_scores, want_scores, atol=1e-5), (user, got, order)

    # bandit posteriors are the sum of every worker's partials, whichever worker answers
    counts = oracle_bandit(events, DEFAULTS.reward_weight_map())
    for arm in sorted(counts)[::25]:
        imp, rew = counts[arm]
        if not (imp or rew):
            continue
        for w in (a, b):
            body = w.json(f"/arms/{arm}")
            assert (body["impressions"], body["rewards"]) == (imp, rew), (arm, body)
