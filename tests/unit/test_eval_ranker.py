"""``profiles ranker train|eval`` on a behaviour log, and the ranker-fitting helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream.cli import main
from stream.core.hybrid import FEATURES
from stream.core.ranker import Ranker
from stream.eval.rankers import CandidateSet, choose_ranker, logloss_auc, query_recall
from tests.unit.test_eval_split import synthetic, write

pytestmark = pytest.mark.unit


def test_query_recall_counts_missed_targets_and_ties() -> None:
    # query 0: 3 candidates, target scored 2nd; query 1: 2 candidates tied, the target one of
    # them, and one more target that is no candidate (ranked below, tied with 7 others)
    cs = CandidateSet(np.zeros((5, 1)), np.array([0, 1, 0, 1, 0], dtype=np.int8),
                      np.array([0, 0, 0, 1, 1]), np.array([0, 1]), np.array([1, 2]),
                      np.array([10, 10]), ("f",))
    p = np.array([0.9, 0.5, 0.1, 0.3, 0.3])
    r = query_recall(cs, p, k=1)
    assert r.tolist() == [0.0, 0.5, 0.0]
    r = query_recall(cs, p, k=3)
    assert r.tolist() == pytest.approx([1.0, 1.0, 1 / 8])
    ll, auc = logloss_auc(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.4]))
    assert auc == pytest.approx(3.5 / 4)  # the tied pair counts half
    assert ll == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.6])))


def test_choose_ranker_prefers_the_model_that_ranks() -> None:
    rng = np.random.default_rng(0)
    n_q, per = 200, 30
    x = rng.normal(size=(n_q * per, 2))
    # the label depends on |x0| (trees can learn it, a linear model cannot)
    score = np.abs(x[:, 0]) + 0.1 * rng.normal(size=len(x))
    y = np.zeros(len(x), dtype=np.int8)
    q = np.repeat(np.arange(n_q), per)
    for i in range(n_q):
        rows = np.flatnonzero(q == i)
        y[rows[np.argmax(score[rows])]] = 1
    cs = CandidateSet(x, y, q, np.arange(n_q) % 50, np.ones(n_q, dtype=np.int64),
                      np.full(n_q, 100), ("a", "b"))
    from stream.eval.run import single_threaded

    with single_threaded():
        choice = choose_ranker(cs, seed=0, linear_grid=(1.0,),
                               tree_grid=({"max_iter": 30, "max_leaf_nodes": 7,
                                           "min_samples_leaf": 20},))
    kinds = {r["kind"]: r for r in choice.report}
    assert kinds["trees"]["val_recall@20"] > kinds["linear"]["val_recall@20"]
    assert choice.kind == "trees" and choice.ranker.kind == "trees"
    assert kinds["trees"]["val_auc"] > kinds["linear"]["val_auc"]


def test_ranker_train_and_eval_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    items, events = synthetic(n_users=40, n_items=60, per_user=30, seed=13)
    ep, ip = write(tmp_path / "log", items, events)
    out = tmp_path / "ranker"
    assert main(["ranker", "train", "--events", str(ep), "--items", str(ip), "--out", str(out),
                 "--encoder", "hashing", "--sequence-seconds", "5"]) == 0
    assert "ranker:" in capsys.readouterr().out
    r = Ranker.load(out)
    assert r.features == FEATURES
    # the sequence source's model travels in the same directory, loadable without pickle
    from encoder.sequence import SequenceModel

    seq = SequenceModel.load(out)
    assert len(seq.item_ids) == 60 and r.meta["sequence"]["files"] == ["sequence.json",
                                                                       "sequence.npz"]
    meta = json.loads((out / "ranker.json").read_text())
    assert meta["trained_on"]["part"].startswith("validation")
    assert {x["kind"] for x in meta["metrics"]["validation"]} == {"linear", "trees"}
    assert meta["signals"]["covis_window_ms"] > 0 and "recent_half_life_ms" in meta["hybrid"]
    assert main(["ranker", "eval", "--events", str(ep), "--items", str(ip), "--ranker", str(out),
                 "--encoder", "hashing", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test"]["positives"] > 0 and res["test"]["rows"] > res["test"]["positives"]
    for name in ("ranker_metrics", "default_ranker"):
        assert 0 < res[name]["logloss"] and 0 <= res[name]["auc"] <= 1
    assert res["covis_score_only"]["logloss"] is None
    with pytest.raises(SystemExit) as exc:
        main(["ranker", "eval", "--events", str(ep), "--items", str(ip), "--ranker",
              str(tmp_path / "none")])
    assert exc.value.code == 2


def test_ranked_lists_are_what_the_evaluator_scores(tmp_path: Path) -> None:
    """The serving == evaluation helper: generate + predict + rank as of a cut-off."""
    from encoder import HashingEncoder
    from stream.core.hybrid import HybridParams
    from stream.core.profile import ProfileParams
    from stream.core.ranker import default_ranker
    from stream.core.signals import SignalParams
    from stream.eval.hybrid_eval import GenSettings, ranked_lists
    from tests.unit.test_eval_split import load

    items, events = synthetic(n_users=20, n_items=40, per_user=20, seed=2)
    ev = load(tmp_path, items, events)
    vec = {"untuned": HashingEncoder(dim=16).encode(ev.texts)}
    gs = GenSettings(SignalParams(), HybridParams(), "untuned")
    cut = int(np.median(ev.ts))
    users = ev.users[:8] + ["nobody"]
    lists = ranked_lists(ev, vec, ProfileParams(), gs, default_ranker(), users, cut, 10)
    assert "nobody" not in lists and len(lists) == 8
    bought = {}
    for e in events:
        if e["ts"] <= cut and e["type"] == "purchase":
            bought.setdefault(e["user_id"], set()).add(e["item_id"])
    for u, top in lists.items():
        assert 0 < len(top) <= 10
        scores = [s for _, s in top]
        assert scores == sorted(scores, reverse=True)
        assert not {i for i, _ in top} & bought.get(u, set())  # purchased items excluded
    # the same call twice gives the same lists (deterministic)
    assert ranked_lists(ev, vec, ProfileParams(), gs, default_ranker(), users, cut, 10) == lists
