"""``profiles eval``: the JSON object the issue fixes, the table, the plot, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.cli import main
from tests.unit.test_eval_split import synthetic, write

pytestmark = pytest.mark.unit

METHODS = "popularity,recent_pop_7d,recent_pop_30d,covis,itemknn,content_untuned,buy_again,hybrid"


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    items, events = synthetic(n_users=40, n_items=60, per_user=30, seed=11)
    return write(tmp_path_factory.mktemp("log"), items, events)


def test_eval_json_shape_and_plot(log, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ep, ip = log
    png = tmp_path / "recall.png"
    rc = main(["eval", "--events", str(ep), "--items", str(ip), "--json", "--encoder", "hashing",
               "--bootstrap", "30", "--methods", METHODS, "--plot", str(png), "--no-cold",
               "--ablation"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"]["ties"] == "unordered"
    assert out["protocol"]["split"]["scheme"] == "per-user time split"
    new = out["methods"]
    assert set(new) == {"popularity", "recent_pop_7d", "recent_pop_30d", "covis", "itemknn",
                        "content_untuned", "hybrid"}  # buy_again: all-items protocol only
    for d in new.values():
        assert {"recall@20", "ndcg@20", "recall@10", "mrr", "n", "ci95"} <= set(d)
        assert d["n"] == out["n"] > 0
        assert 0 <= d["recall@20"] <= 1 and d["ci95"]["recall@20"][0] <= d["recall@20"]
    assert "buy_again" in out["all_items"]["methods"]
    assert out["all_items"]["n"] >= out["n"]
    assert out["new_session"]["n"] <= out["n"]
    assert out["best_baseline"] in set(new) - {"hybrid"}
    best = out["best_baseline"]
    assert all(new[best]["recall@20"] >= d["recall@20"] for m, d in new.items() if m != "hybrid")
    d = out["differences"]["hybrid - popularity"]["recall@20"]
    assert {"mean", "ci95", "excludes_0"} <= set(d)
    assert d["mean"] == pytest.approx(new["hybrid"]["recall@20"] - new["popularity"]["recall@20"],
                                      abs=2e-6)
    assert set(out["ablation"]) == {"hybrid-content", "hybrid-covis", "hybrid-trending",
                                    "hybrid-popularity", "hybrid-category", "hybrid-sequence",
                                    "hybrid-fresh"}
    assert "hybrid - hybrid-covis" in out["differences"]
    assert out["cold"] == {}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_table_and_cold(log, capsys: pytest.CaptureFixture) -> None:
    ep, ip = log
    rc = main(["eval", "--events", str(ep), "--items", str(ip), "--encoder", "hashing",
               "--bootstrap", "20", "--methods", "popularity,itemknn"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "new items (history excluded)" in text and "cold: items" in text
    assert "cold: users_1" in text and "best baseline: " in text


def test_eval_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--events", str(tmp_path / "nope.jsonl"), "--items", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "no such file" in capsys.readouterr().err
