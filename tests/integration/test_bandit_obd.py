"""The converted Open Bandit Dataset (random/all, 10,000 impressions) through the real broker and
a real worker: per-arm counts equal a pandas groupby of the CSV exactly, Thompson posteriors
equal mabwiser's, per-position counts too, and served rankings are logged with propensities.

The hashing encoder is used: bandit counts never depend on item vectors (and it is cheaper).
"""

from __future__ import annotations

import orjson
import pytest

from stream.data.obd import prepare_obd
from stream.kafka.clients import create_topics
from stream.tools.replay import load_items, replay
from tests.conftest import kafka, read_jsonl, read_topic, total_outcomes
from tests.obd_data import cache_dir, obd_frame

pytestmark = pytest.mark.timeout(600)


def test_obd_replay_equals_groupby_and_mabwiser(broker, start_worker, topics, tmp_path):
    from mabwiser.mab import MAB, LearningPolicy

    data = prepare_obd(tmp_path / "obd", cache_dir())
    df = obd_frame()
    n_events = len(df) + int(df["click"].sum())
    assert data["events"] == n_events == 10_038

    decisions_topic = "decisions-" + topics["group_id"]
    create_topics(kafka(broker.bootstrap), {topics["events_topic"]: 4, topics["items_topic"]: 1,
                                     topics["dlq_topic"]: 1})
    assert load_items(data["items_file"], kafka(broker.bootstrap),
                      topic=topics["items_topic"], progress=False).sent == 80
    worker = start_worker(encoder_kind="hashing", bandit_context="position",
                          decisions_topic=decisions_topic)
    worker.wait_ready(240)
    sent = replay(data["events_file"], kafka(broker.bootstrap), topic=topics["events_topic"],
                  progress=False)
    assert sent.sent == n_events and sent.failed == 0
    worker.wait_for(lambda: total_outcomes(worker) == n_events, 300,
                    "every OBD event to reach a final outcome")
    stats = worker.stats()
    assert stats["events_applied"] == n_events and not stats.get("parked")

    # per-arm impressions and clicks == pandas groupby of the CSV, exactly
    g = df.groupby("item_id")["click"].agg(["count", "sum"])
    assert len(g) == 80
    mab = MAB(arms=sorted(g.index.tolist()), learning_policy=LearningPolicy.ThompsonSampling(),
              seed=7)
    mab.fit(decisions=df["item_id"].to_numpy(), rewards=df["click"].to_numpy())
    successes, failures = mab._imp.arm_to_success_count, mab._imp.arm_to_fail_count
    for item, row in g.iterrows():
        body = worker.json(f"/arms/{item}")
        assert body["_status"] == 200, body
        assert (body["impressions"], body["rewards"]) == (row["count"], row["sum"]), item
        # Thompson posterior == mabwiser's (1 + clicks, 1 + non-clicks)
        assert (body["alpha"], body["beta"]) == (successes[item], failures[item]), item
        assert (body["alpha"], body["beta"]) == (1 + row["sum"], 1 + row["count"] - row["sum"])

    # per-position (context) counts == groupby (item, position)
    gp = df.groupby(["item_id", "position"])["click"].agg(["count", "sum"])
    for (item, pos), row in list(gp.iterrows())[::7]:
        body = worker.json(f"/arms/{item}?context={pos}")
        assert (body["impressions"], body["rewards"]) == (row["count"], row["sum"]), (item, pos)
    assert worker.json("/arms/0?context=9")["_status"] == 404

    # totals in /metrics and the top arms
    assert worker.total("profiles_bandit_impressions") == len(df)
    assert worker.total("profiles_bandit_rewards") == df["click"].sum()
    top = worker.json("/arms?k=5")
    want_top = g.sort_values("count", ascending=False, kind="stable").head(5)
    assert [a["impressions"] for a in top["arms"]] == want_top["count"].tolist()
    assert top["total_arms"] == 80

    # served rankings are logged with a propensity per shown arm
    users = list(dict.fromkeys(e["user_id"] for e in read_jsonl(data["events_file"])))[:3]
    served = {}
    for u in users:
        body = worker.json(f"/users/{u}/candidates?k=3")
        assert body["_status"] == 200 and len(body["candidates"]) == 3, body
        assert body["policy"] == "thompson:samples=1000"
        served[body["decision_id"]] = (u, body["candidates"])
    records = {r["decision_id"]: r for r in (orjson.loads(m.value) for m in read_topic(broker.bootstrap, decisions_topic, at_least=3))}
    assert set(served) <= set(records)
    for did, (u, cands) in served.items():
        r = records[did]
        assert r["user_id"] == u and r["propensity_method"] == "monte-carlo"
        assert r["propensity_samples"] >= 1000 and r["pool"] == 50
        assert [s["arm"] for s in r["shown"]] == [c["item_id"] for c in cands]
        assert [s["propensity"] for s in r["shown"]] == [c["propensity"] for c in cands]
        assert all(0 < s["propensity"] <= 1 for s in r["shown"])
