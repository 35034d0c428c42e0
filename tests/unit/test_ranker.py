"""The CTR ranker (stream.core.ranker): exported trees / logistic regression predict as sklearn
does, and model directories round-trip without pickle."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from stream.core.errors import StateError
from stream.core.hybrid import FEATURES
from stream.core.ranker import (
    ARRAYS_FILE,
    FORMAT,
    META_FILE,
    Ranker,
    default_ranker,
    export_hist_gradient_boosting,
    export_logistic,
)

pytestmark = pytest.mark.unit

NAMES = ("f0", "f1", "f2", "f3", "f4")


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(NAMES)))
    x[:, 3] = rng.integers(0, 4, n)  # a few distinct values: thresholds fall between them
    z = 1.5 * x[:, 0] - x[:, 1] * x[:, 2] + 0.5 * (x[:, 3] == 2) - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    x[rng.random((n, len(NAMES))) < 0.1] = np.nan  # missing values, routed by learned rules
    return x, y


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """sklearn's OpenMP threads on a shared 2-core box make a 0.2 s fit take 10 s."""
    pytest.importorskip("sklearn.ensemble")  # load its OpenMP runtime before limiting it
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def hgb() -> object:
    sk = pytest.importorskip("sklearn.ensemble")
    x, y = data(3000, 0)
    return sk.HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=15,
                                             early_stopping=False, random_state=0).fit(x, y)


def test_exported_trees_predict_exactly_as_sklearn(hgb: object) -> None:
    r = export_hist_gradient_boosting(hgb, NAMES, trained_on="synthetic")
    x, _ = data(2000, 1)
    x = np.vstack([x, np.full((1, len(NAMES)), np.nan), np.full((1, len(NAMES)), 1e300)])
    want = hgb.predict_proba(x)[:, 1]  # type: ignore[attr-defined]
    got = r.predict(x)
    assert np.abs(got - want).max() <= 1e-9
    raw = hgb._raw_predict(x)[:, 0]  # type: ignore[attr-defined]
    assert np.abs(r.decision_function(x) - raw).max() <= 1e-9
    assert r.kind == "trees" and r.features == NAMES
    assert r.describe()["trees"] == 60 and r.meta["params"]["max_leaf_nodes"] == 15


def test_exported_logistic_regression_predicts_as_sklearn() -> None:
    lm = pytest.importorskip("sklearn.linear_model")
    pre = pytest.importorskip("sklearn.preprocessing")
    x, y = data(2000, 2)
    x = np.nan_to_num(x)
    scaler = pre.StandardScaler().fit(x)
    est = lm.LogisticRegression(C=0.5, max_iter=500).fit(scaler.transform(x), y)
    r = export_logistic(est, NAMES, mean=scaler.mean_, scale=scaler.scale_)
    xt = np.nan_to_num(data(500, 3)[0])
    want = est.predict_proba(scaler.transform(xt))[:, 1]
    assert np.abs(r.predict(xt) - want).max() <= 1e-9
    # A missing value counts as the feature's mean.
    xm = xt[:1].copy()
    xm[0, 2] = np.nan
    xf = xt[:1].copy()
    xf[0, 2] = scaler.mean_[2]
    assert r.predict(xm)[0] == pytest.approx(r.predict(xf)[0], rel=1e-12)


def test_export_rejects_what_it_cannot_represent(hgb: object) -> None:
    sk = pytest.importorskip("sklearn.ensemble")
    with pytest.raises(ValueError, match="not fitted"):
        export_hist_gradient_boosting(sk.HistGradientBoostingClassifier(), NAMES)
    with pytest.raises(ValueError, match="5 features"):
        export_hist_gradient_boosting(hgb, NAMES[:3])
    x, _ = data(300, 4)
    multi = sk.HistGradientBoostingClassifier(max_iter=1, max_leaf_nodes=3).fit(
        np.nan_to_num(x), np.arange(300) % 3)
    with pytest.raises(ValueError, match="binary"):
        export_hist_gradient_boosting(multi, NAMES)


@pytest.mark.parametrize("kind", ["linear", "trees"])
def test_save_load_round_trip(tmp_path: object, hgb: object, kind: str) -> None:
    r = default_ranker() if kind == "linear" else export_hist_gradient_boosting(hgb, NAMES)
    d = tmp_path / "model"  # type: ignore[operator]
    meta = r.save(d, trained_on={"events": "ml-100k", "split": "time"},
                  metrics={"auc": 0.75, "logloss": 0.41})
    assert sorted(p.name for p in d.iterdir()) == [ARRAYS_FILE, META_FILE]
    on_disk = json.loads((d / META_FILE).read_text())
    assert on_disk == meta
    assert on_disk["format"] == FORMAT and on_disk["kind"] == kind
    assert on_disk["features"] == list(r.features) and on_disk["created"]
    with np.load(d / ARRAYS_FILE, allow_pickle=False) as z:
        assert set(z.files) == set(r.arrays)
    back = Ranker.load(d)
    x = np.random.default_rng(5).standard_normal((50, len(r.features)))
    assert back.predict(x).tolist() == r.predict(x).tolist()
    assert back.meta["metrics"] == {"auc": 0.75, "logloss": 0.41}
    r.save(d)  # overwriting a ranker directory is fine
    assert Ranker.load(d).predict(x).tolist() == r.predict(x).tolist()


def test_load_fails_with_one_state_error(tmp_path: object) -> None:
    d = tmp_path / "m"  # type: ignore[operator]
    with pytest.raises(StateError, match="no ranker.json"):
        Ranker.load(d)
    default_ranker().save(d)
    arrays = (d / ARRAYS_FILE).read_bytes()
    (d / ARRAYS_FILE).write_bytes(arrays[:-10] + b"0123456789")
    with pytest.raises(StateError, match="sha256"):
        Ranker.load(d)
    (d / ARRAYS_FILE).write_bytes(arrays)
    meta = json.loads((d / META_FILE).read_text())
    (d / META_FILE).write_text(json.dumps({**meta, "format": "other/9"}))
    with pytest.raises(StateError, match="unsupported format"):
        Ranker.load(d)
    (d / META_FILE).write_text(json.dumps({**meta, "features": ["just_one"]}))
    with pytest.raises(StateError, match="shape"):
        Ranker.load(d)
    other = tmp_path / "busy"  # type: ignore[operator]
    other.mkdir()
    (other / "x.txt").write_text("keep me")
    with pytest.raises(StateError, match="not a ranker directory"):
        default_ranker().save(other)


def test_default_ranker_and_score_by_name() -> None:
    r = default_ranker()
    assert r.kind == "linear" and r.features == FEATURES
    x = np.zeros((2, len(FEATURES)))
    x[1, FEATURES.index("covis_score")] = 1.0
    p = r.predict(x)
    assert 0 < p[0] < p[1] < 1
    # score() picks the ranker's columns by name from any wider matrix
    sub = Ranker("linear", ("covis_score",), {"weights": np.array([2.0]),
                                              "mean": np.zeros(1), "scale": np.ones(1),
                                              "bias": np.array([0.0])})
    assert sub.score(x).tolist() == pytest.approx([0.5, 1 / (1 + np.exp(-2.0))])
    with pytest.raises(ValueError, match="needs feature"):
        sub.score(x, names=["a"] * len(FEATURES))
    with pytest.raises(ValueError, match="shape"):
        r.predict(np.zeros((2, 3)))
    big = r.predict(np.full((1, len(FEATURES)), 1e6))  # no overflow warnings
    assert big[0] == 1.0
