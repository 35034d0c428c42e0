"""profiles eval: no method may use the order of events with equal ts, and nothing depends on
catalogue rows.  The whole evaluation (every method, both protocols, the cold protocols, the
bootstrap) is unchanged to 1e-9 when event ids are permuted within equal-ts groups and when
the catalogue's rows are permuted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoder import HashingEncoder
from stream.core.profile import ProfileParams
from stream.eval import hybrid_eval
from stream.eval.data import ColdParams, SplitParams
from stream.eval.run import EvalConfig, evaluate
from tests.unit.test_eval_split import load, synthetic

pytestmark = pytest.mark.unit

METHODS = ("popularity", "recent_pop_7d", "recent_pop_30d", "covis", "itemknn",
           "content_untuned", "buy_again", "hybrid")


def run(tmp: Path, items: list[dict], events: list[dict]) -> dict:
    ev = load(tmp, items, events, SplitParams(0.2, 0.25))
    vec = HashingEncoder(dim=32).encode(ev.texts)
    cfg = EvalConfig(n_boot=50, seed=3, methods=METHODS,
                     cold=ColdParams(item_frac=0.15, user_frac=0.2, seed=1),
                     # a learnt SASRec's initialisation follows catalogue rows: the metric
                     # code's invariance is what is tested here
                     hybrid_sequence=False)
    cfg.extra.update({k: v for k, v in hybrid_eval.builders().items() if k != "sasrec"})
    cfg.ablations = tuple(hybrid_eval.ABLATIONS)
    out, curves = evaluate(ev, {"untuned": vec}, ProfileParams(), cfg)
    out["curves"] = curves
    return out


def numbers(d: object, path: str = "") -> dict[str, float]:
    """Every number in a nested result (timings and fingerprints left out)."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("seconds", "fingerprint", "train_seconds"):
                continue
            out.update(numbers(v, f"{path}/{k}"))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(numbers(v, f"{path}[{i}]"))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[path] = float(d)
    return out


def assert_same(a: dict, b: dict) -> None:
    na, nb = numbers(a), numbers(b)
    assert na.keys() == nb.keys()
    bad = {k: (na[k], nb[k]) for k in na if abs(na[k] - nb[k]) > 1e-9}
    assert not bad, list(bad.items())[:10]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict], dict]:
    items, events = synthetic(n_users=40, n_items=60, per_user=24, seed=7)
    out = run(tmp_path_factory.mktemp("base"), items, events)
    # the run is meaningful: every method scored, the cold sets are not empty
    assert set(out["methods"]) == set(METHODS) - {"buy_again"}
    assert "buy_again" in out["all_items"]["methods"]
    assert out["n"] > 40 and out["cold"]["items"]["n"] > 0 and out["cold"]["users_1"]["n"] > 0
    assert "hybrid-content" in out["ablation"] and "hybrid-content" in out["cold"]["items"][
        "ablation"]
    return items, events, out


def test_event_ids_permuted_within_equal_ts_groups(base, tmp_path: Path) -> None:
    items, events, out = base
    rng = np.random.default_rng(0)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, e in enumerate(events):
        groups.setdefault((e["user_id"], e["ts"]), []).append(i)
    permuted = [dict(e) for e in events]
    n_moved = 0
    for idx in groups.values():
        ids = [events[i]["event_id"] for i in idx]
        new = rng.permutation(ids).tolist()
        n_moved += sum(a != b for a, b in zip(ids, new))
        for i, eid in zip(idx, new):
            permuted[i]["event_id"] = eid
    assert n_moved > 50
    rng.shuffle(permuted)  # and the file order
    assert_same(out, run(tmp_path, items, permuted))


def test_catalogue_rows_permuted(base, tmp_path: Path) -> None:
    items, events, out = base
    rng = np.random.default_rng(1)
    shuffled = [items[i] for i in rng.permutation(len(items)).tolist()]
    assert shuffled != items
    assert_same(out, run(tmp_path, shuffled, events))
