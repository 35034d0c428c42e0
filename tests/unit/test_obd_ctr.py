"""OBD click prediction (stream/eval/obd_ctr.py): the time split never lets a test row reach
training, the baselines are what they say by hand, the metrics match scikit-learn's, and the
whole evaluation (and its CLI) runs on a small synthetic OBD-shaped log.  The run on the real
sample is a benchmark (``pytest -m bench``)."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from stream.cli import main
from stream.core.errors import DataError
from stream.data.obd import OBP_VERSION, SDIST, member
from stream.eval.obd_ctr import (
    BASELINES,
    FEATURES,
    MODELS,
    EvalConfig,
    auc,
    baselines,
    check_disjoint,
    concat,
    evaluate,
    features,
    format_table,
    frame_from_rows,
    logloss,
    time_split,
)

pytestmark = pytest.mark.unit

SMALL = EvalConfig(smoothing_grid=(10.0, 100.0), logistic_c=(0.1, 1.0),
                   hgb_grid=((20, 4, 50),), n_boot=50)
T0 = datetime(2019, 11, 24, tzinfo=UTC)


def _stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=float(seconds))).isoformat(sep=" ")


def synthetic(population: str = "all", n: int = 1500, n_items: int = 12, seed: int = 0,
              tie_every: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """OBD-shaped log and item_context rows: item CTRs from 1 % to 25 %, a user feature that
    doubles the click rate, one affinity column per item."""
    rng = np.random.default_rng(seed)
    ctr = np.linspace(0.01, 0.25, n_items)
    items = [{"": str(i), "item_id": str(i), "item_feature_0": f"{rng.normal():.6f}",
              "item_feature_1": f"cat{i % 3}", "item_feature_2": f"brand{i % 4}",
              "item_feature_3": f"f3{i % 2}"} for i in range(n_items)]
    secs = np.sort(rng.uniform(0, 7 * 86_400, n))
    if tie_every:
        secs = secs[(np.arange(n) // tie_every) * tie_every]   # runs of equal timestamps
    rows = []
    for r in range(n):
        item = int(rng.integers(n_items))
        u0 = f"u0-{rng.integers(2)}"
        p = min(ctr[item] * (2.0 if u0 == "u0-1" else 1.0), 0.9)
        row = {"": str(r), "timestamp": _stamp(secs[r]), "item_id": str(item),
               "position": str(int(rng.integers(1, 4))), "click": str(int(rng.random() < p)),
               "propensity_score": str(1 / n_items), "user_feature_0": u0,
               "user_feature_1": f"u1-{rng.integers(3)}", "user_feature_2": f"u2-{rng.integers(4)}",
               "user_feature_3": f"u3-{rng.integers(4)}"}
        for i in range(n_items):
            row[f"user-item_affinity_{i}"] = "1.0" if rng.random() < 0.05 else "0.0"
        rows.append(row)
    return rows, items


def synthetic_frame(n: int = 1500, **kw):
    return concat([frame_from_rows(*synthetic(pop, n, seed=s, **kw), pop)
                   for s, pop in enumerate(("all", "men", "women"))])


# ------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("tie_every", [0, 7])
def test_time_split_is_disjoint_by_row_and_by_time(tie_every):
    frame = synthetic_frame(400, tie_every=tie_every)
    sp = time_split(frame.ts, frame.row_id)
    n = len(frame)
    parts = [sp.train, sp.val, sp.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))      # a partition
    assert len(set(frame.row_id)) == n                                  # row ids are identities
    ids = [set(frame.row_id[p]) for p in parts]
    assert not ids[0] & ids[2] and not ids[1] & ids[2] and not ids[0] & ids[1]
    # by time: every fitted (train + validation) row is strictly older than every test row
    assert frame.ts[sp.train].max() < frame.ts[sp.val].min()
    assert frame.ts[sp.fit].max() < frame.ts[sp.test].min()
    assert abs(len(sp.train) - 0.7 * n) <= 7 and abs(len(sp.test) - 0.2 * n) <= 7
    check_disjoint(frame, sp)


def test_check_disjoint_catches_a_leak():
    frame = synthetic_frame(200)
    sp = time_split(frame.ts, frame.row_id)
    from stream.eval.obd_ctr import Split

    leaky = Split(train=np.r_[sp.train, sp.test[:1]], val=sp.val, test=sp.test)
    with pytest.raises(DataError):
        check_disjoint(frame, leaky)


def test_time_split_rejects_an_empty_part():
    with pytest.raises(DataError):
        time_split(np.zeros(10, dtype=np.int64), np.array([str(i) for i in range(10)]))


# -------------------------------------------------------------------------------- baselines
def _toy():
    """Six fitted rows and three scored rows; items a/b, positions 1/2."""
    def row(i, item, pos, click, sec):
        r = {"": str(i), "timestamp": _stamp(sec), "item_id": str(item), "position": str(pos),
             "click": str(click), "propensity_score": "0.5"}
        r.update({f"user_feature_{j}": "u" for j in range(4)})
        return r

    items = [{"item_id": str(i), "item_feature_0": "0.0", "item_feature_1": "c",
              "item_feature_2": "b", "item_feature_3": "f"} for i in range(3)]
    log = [row(0, 0, 1, 1, 0), row(1, 0, 1, 0, 1), row(2, 0, 2, 0, 2),
           row(3, 1, 2, 1, 3), row(4, 1, 1, 0, 4), row(5, 1, 2, 0, 5),
           row(6, 0, 1, 0, 6), row(7, 1, 2, 1, 7), row(8, 2, 1, 0, 8)]
    return frame_from_rows(log, items, "all")


def test_baselines_by_hand():
    frame = _toy()
    fit, apply = np.arange(6), np.array([6, 7, 8])
    b = baselines(frame, fit, apply, a=2.0)
    prior = 2 / 6
    assert b["global_ctr"] == pytest.approx([prior] * 3)
    # position 1: rows 0, 1, 4 -> 1 click of 3; position 2: rows 2, 3, 5 -> 1 of 3; smoothing 1
    pos = (1 + prior) / (3 + 1)
    assert b["position_ctr"] == pytest.approx([pos, pos, pos])
    # item 0: 1 click / 3 shown; item 1: 1 / 3; item 2 unseen -> the prior
    item = (1 + 2 * prior) / (3 + 2)
    assert b["item_ctr"] == pytest.approx([item, item, prior])
    # the scored rows' own clicks never matter
    flipped = frame.with_clicks(np.r_[frame.click[:6], 1 - frame.click[6:]])
    for k, v in baselines(flipped, fit, apply, a=2.0).items():
        assert v == pytest.approx(b[k])


def test_features_of_scored_rows_read_only_fitted_clicks_and_fitted_rows_are_out_of_fold():
    frame = synthetic_frame(300)
    sp = time_split(frame.ts, frame.row_id)
    xf, xs = features(frame, sp.fit, sp.test, a=10.0)
    assert xf.shape == (len(sp.fit), len(FEATURES)) and xs.shape == (len(sp.test), len(FEATURES))
    assert np.isfinite(xf).all() and np.isfinite(xs).all()
    click = frame.click.copy()
    click[sp.test] = 1 - click[sp.test]
    xf2, xs2 = features(frame.with_clicks(click), sp.fit, sp.test, a=10.0)
    np.testing.assert_array_equal(xf, xf2)
    np.testing.assert_array_equal(xs, xs2)
    # out of fold: a fitted row's own click does not move its own item CTR / bandit mean
    click = frame.click.copy()
    r = sp.fit[0]
    click[r] = 1 - click[r]
    xf3, _ = features(frame.with_clicks(click), sp.fit, sp.test, a=10.0)
    cols = [FEATURES.index("item_ctr"), FEATURES.index("bandit_mean")]
    np.testing.assert_array_equal(xf3[0, cols], xf[0, cols])


def test_bandit_mean_is_the_beta_posterior_mean_of_the_fitted_counts():
    frame = _toy()
    _, xs = features(frame, np.arange(6), np.array([6, 7, 8]), a=2.0)
    col = xs[:, FEATURES.index("bandit_mean")]
    assert col == pytest.approx([(1 + 1) / (2 + 3), (1 + 1) / (2 + 3), 1 / 2])


# ---------------------------------------------------------------------------------- metrics
def test_metrics_match_sklearn():
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.1).astype(int)
    p = np.round(rng.random(500) * 0.3 + 0.2 * y, 2)     # rounded: many ties
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12)
    # pairs (positive vs negative): .1 vs .1 = 1/2, .1 vs .2 = 0, .3 vs .1 = 1, .3 vs .2 = 1
    assert auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.1, 0.2, 0.3])) == pytest.approx(2.5 / 4)
    assert np.isnan(auc(np.zeros(3), np.array([0.1, 0.2, 0.3])))


# ---------------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def result():
    return evaluate(synthetic_frame(1500), SMALL)


def test_evaluate_reports_every_method_with_cis_and_positives(result):
    rep = result.report
    assert set(rep["methods"]) == set(BASELINES) | set(MODELS)
    sp = rep["split"]
    assert sp["train"]["positives"] + sp["validation"]["positives"] + sp["test"]["positives"] \
        == rep["data"]["positives"]
    assert sp["test"]["positives"] > 0
    for name, m in rep["methods"].items():
        assert m["n"] == sp["test"]["rows"] and m["positives"] == sp["test"]["positives"]
        assert m["logloss_ci"][0] <= m["logloss"] <= m["logloss_ci"][1], name
        assert m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1], name
        assert ("vs_position_ctr" in m) == (name != "position_ctr")
    assert rep["methods"]["global_ctr"]["auc"] == 0.5
    assert rep["selection"]["chosen"] in MODELS and result.kind == rep["selection"]["chosen"]
    # a learnable signal (item CTR 1-25 %, a user feature x2): the models find it
    for k in ("item_ctr", *MODELS):
        assert rep["methods"][k]["auc"] > 0.6, k
        assert rep["methods"][k]["logloss"] < rep["methods"]["global_ctr"]["logloss"], k
    json.dumps(rep)
    table = format_table(rep)
    assert "position-only CTR" in table and "HistGradientBoosting" in table


def test_no_test_row_reaches_training(result):
    """Flip every test click: every prediction on test (and on validation) stays the same."""
    frame = synthetic_frame(1500)
    click = frame.click.copy()
    click[result.split.test] = 1 - click[result.split.test]
    other = evaluate(frame.with_clicks(click), SMALL)
    np.testing.assert_array_equal(other.split.test, result.split.test)
    assert other.report["selection"] == result.report["selection"]
    for k, p in result.test_predictions.items():
        np.testing.assert_array_equal(other.test_predictions[k], p, err_msg=k)
    for k, p in result.validation_predictions.items():
        np.testing.assert_array_equal(other.validation_predictions[k], p, err_msg=k)


@pytest.mark.parametrize("kind", MODELS)
def test_both_models_export_to_a_ranker_directory_that_reproduces_them(result, kind, tmp_path):
    from stream.core.ranker import Ranker
    from stream.eval.obd_ctr import to_ranker

    r = to_ranker(result, kind)
    r.save(tmp_path / kind)
    back = Ranker.load(tmp_path / kind)
    assert back.kind == {"logistic": "linear", "hgb": "trees"}[kind]
    assert back.features == FEATURES
    assert back.meta["metrics"]["obd_test_positives"] == result.report["split"]["test"]["positives"]
    np.testing.assert_allclose(back.predict(result.x_test), result.test_predictions[kind],
                               rtol=0, atol=1e-12)


def test_export_ranker_checks_and_saves_the_chosen_model(result, tmp_path):
    from stream.eval.obd_ctr import export_ranker

    info = export_ranker(result, None)
    assert info["exported"] is None and info["max_abs_diff_vs_sklearn_on_test"] <= 1e-12
    info = export_ranker(result, tmp_path / "ranker")
    assert info["exported"] == str(tmp_path / "ranker")
    assert (tmp_path / "ranker" / "ranker.json").is_file()


# ---------------------------------------------------------------------------------------- CLI
def _fake_sdist(folder) -> None:
    """The obp sdist's random-campaign members, filled with synthetic rows."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / SDIST, "w:gz") as tar:
        for s, pop in enumerate(("all", "men", "women")):
            rows, items = synthetic(pop, 600, seed=s)
            for name, data in ((None, rows), ("item_context.csv", items)):
                cols = list(data[0])
                text = "\n".join([",".join(cols)] + [",".join(r[c] for c in cols) for r in data])
                raw = (text + "\n").encode()
                info = tarfile.TarInfo(member("random", pop, name))
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    assert OBP_VERSION in SDIST


def test_cli_eval_obd_json(tmp_path, capsys, monkeypatch):
    import dataclasses

    from stream.eval import obd_ctr

    _fake_sdist(tmp_path / "obd")
    # the command's own grids, made small (the CLI passes --bootstrap and --seed through)
    monkeypatch.setattr(obd_ctr, "EvalConfig", lambda **kw: dataclasses.replace(SMALL, **kw))
    assert main(["ranker", "eval-obd", "--data", str(tmp_path / "obd"), "--json",
                 "--bootstrap", "30"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["methods"]) == set(BASELINES) | set(MODELS)
    assert rep["data"]["rows"] == 1800
    assert rep["ranker"]["kind"] == rep["selection"]["chosen"] and rep["ranker"]["exported"] is None
    assert main(["ranker", "eval-obd", "--data", str(tmp_path / "obd"), "--bootstrap", "30",
                 "--model-out", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "smoothed per-item CTR" in out and f"saved to {tmp_path / 'model'}" in out
    from stream.core.ranker import Ranker

    assert Ranker.load(tmp_path / "model").features == FEATURES


# ------------------------------------------------------------------------------------- bench
@pytest.mark.bench
def test_bench_obd_click_prediction():
    """The real OBD random campaigns (30,000 impressions, 130 clicks), full grids."""
    from stream.eval.obd_ctr import load_random
    from tests.obd_data import obd_sdist

    frame = load_random(obd_sdist())
    res = evaluate(frame)
    rep = res.report
    print("\n" + format_table(rep))
    assert rep["data"] == {**rep["data"], "rows": 30_000, "positives": 130}
    check_disjoint(frame, res.split)
    assert frame.ts[res.split.fit].max() < frame.ts[res.split.test].min()
    for m in rep["methods"].values():
        assert np.isfinite(m["logloss"]) and m["positives"] == rep["split"]["test"]["positives"]
