"""``profiles eval-search`` (stream/eval/search_eval.py) on a small generated log with the
hashing encoder: the metric against a hand count, the equal-relevance choice, and the claim
the real run makes (more of the user's interests at equal relevance, CI above 0)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from encoder.fake import HashingEncoder
from stream.cli import main
from stream.eval.search_eval import SearchEvalConfig, evaluate, interest_share

pytestmark = pytest.mark.unit


def test_interest_share_counts_the_top_k_in_the_true_categories() -> None:
    assert interest_share(["a", "b", "a", None], {"a"}) == 0.5
    assert interest_share(["c"], {"a", "b"}) == 0.0
    assert interest_share([], {"a"}) == 0.0


def test_personalised_search_finds_more_interests_at_equal_relevance() -> None:
    cfg = SearchEvalConfig(users=120, items=600, events=3000, seed=3, k=10, pool=100,
                           tolerance=0.01, n_boot=300, encoder="hashing")
    res = evaluate(cfg, HashingEncoder(64))
    tune = res["tuning_half"]
    held = res["held_out"]
    for v in ("profile", "interests"):
        chosen = res["chosen_blend"][v]
        # the choice: the largest blend whose tuning-half relevance drop is within tolerance
        ok = [b for b in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
              if tune["profile 0"]["relevance@k"] - tune[f"{v} {b:g}"]["relevance@k"]
              <= cfg.tolerance]
        assert chosen == max(ok) and chosen > 0
        diff = held["differences"][f"{v} blend {chosen:g} (equal relevance) - plain"]
        assert diff["interest@k"]["ci95"][0] > 0
        # equal relevance holds out of sample too (twice the tolerance: another half)
        assert diff["relevance@k"]["mean"] >= -2 * cfg.tolerance
    assert held["users"] == 60 and held["cases"] == 60 * len(res["queries"])
    assert sum(res["interests_per_user"]) == 120
    assert np.isfinite(held["methods"]["plain"]["interest@k"]["mean"])


def test_the_command_prints_json_and_refuses_bad_arguments(capsys) -> None:
    rc = main(["eval-search", "--encoder", "hashing", "--users", "30", "--items", "200",
               "--events", "300", "--bootstrap", "100", "--json", "--search-blend", "0.2"])
    assert rc == 0
    res = orjson.loads(capsys.readouterr().out)
    assert res["config"]["default_blend"] == 0.2
    assert any(m.startswith("interests blend 0.2 ") for m in res["held_out"]["methods"])
    with pytest.raises(SystemExit) as exc:  # a log too short for its users: one line
        main(["eval-search", "--encoder", "hashing", "--users", "30", "--events", "10"])
    assert exc.value.code == 1
    assert capsys.readouterr().err.count("\n") == 1
