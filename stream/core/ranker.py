"""The CTR ranker: P(engage | user, item, context) from a candidate's feature row (pure:
stdlib + numpy; no sklearn, no pickle).

Two kinds, both plain arrays:

- ``linear``: logistic regression, ``sigmoid(((x - mean) / scale) . weights + bias)``; a
  missing (NaN) feature counts as its mean;
- ``trees``: a scikit-learn ``HistGradientBoostingClassifier`` exported by
  :func:`export_hist_gradient_boosting` into flat node arrays (numeric splits, NaN routed as
  sklearn routes it), evaluated in numpy; raw score = baseline + the trees' leaves summed in
  tree order, as sklearn does, so predictions equal ``predict_proba[:, 1]`` to rounding.

A model directory is self-describing: ``ranker.json`` (format, kind, features, trained_on,
metrics, created, the sha256 of ``arrays.npz``) and ``arrays.npz`` (read with
``allow_pickle=False``).  :func:`default_ranker` is the hand-set linear ranker used when no
model directory is given.  Exporters take the fitted estimator duck-typed, so this module never
imports sklearn; the training code calls them.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.errors import StateError
from stream.core.files import read_meta, replace_dir, sha256_file, verified_file
from stream.core.hybrid import FEATURES

__all__ = [
    "FORMAT",
    "KINDS",
    "Ranker",
    "default_ranker",
    "export_hist_gradient_boosting",
    "export_logistic",
]

FORMAT = "profiles-ranker/1"
KINDS = ("linear", "trees")
META_FILE = "ranker.json"
ARRAYS_FILE = "arrays.npz"

_LINEAR_ARRAYS = ("weights", "mean", "scale", "bias")
_TREE_ARRAYS = ("feature", "threshold", "missing_left", "is_leaf", "left", "right", "value",
                "roots", "baseline")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow warnings for large |z|
    e = np.exp(-np.abs(z))
    out: np.ndarray = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


class Ranker:
    """A fitted ranker: ``predict(X) -> P(engage)`` with X's columns in ``features`` order."""

    def __init__(self, kind: str, features: Sequence[str], arrays: Mapping[str, np.ndarray],
                 meta: Mapping[str, Any] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"ranker kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.features: tuple[str, ...] = tuple(str(f) for f in features)
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.meta: dict[str, Any] = dict(meta or {})
        self._check()

    def _check(self) -> None:
        d = len(self.features)
        a = self.arrays
        need = _LINEAR_ARRAYS if self.kind == "linear" else _TREE_ARRAYS
        missing = [k for k in need if k not in a]
        if missing:
            raise ValueError(f"{self.kind} ranker lacks arrays {missing}")
        if self.kind == "linear":
            for k in ("weights", "mean", "scale"):
                a[k] = a[k].astype(np.float64).reshape(-1)
                if a[k].shape != (d,):
                    raise ValueError(f"linear ranker: {k} has shape {a[k].shape}, want ({d},)")
            a["bias"] = a["bias"].astype(np.float64).reshape(-1)
            if a["bias"].shape != (1,) or not all(np.isfinite(a[k]).all() for k in _LINEAR_ARRAYS):
                raise ValueError("linear ranker: bias must be one number and all arrays finite")
            if (a["scale"] <= 0).any():
                raise ValueError("linear ranker: scale must be > 0")
            return
        n = a["feature"].reshape(-1).shape[0]
        for k, dt in (("feature", np.int64), ("threshold", np.float64), ("missing_left", np.bool_),
                      ("is_leaf", np.bool_), ("left", np.int64), ("right", np.int64),
                      ("value", np.float64)):
            a[k] = a[k].astype(dt).reshape(-1)
            if a[k].shape != (n,):
                raise ValueError(f"trees ranker: {k} has shape {a[k].shape}, want ({n},)")
        a["roots"] = a["roots"].astype(np.int64).reshape(-1)
        a["baseline"] = a["baseline"].astype(np.float64).reshape(-1)
        inner = ~a["is_leaf"]
        if a["baseline"].shape != (1,) or (a["roots"] < 0).any() or (a["roots"] >= n).any() or (
                inner.any() and (
                    (a["feature"][inner] < 0).any() or (a["feature"][inner] >= d).any()
                    or (a["left"][inner] < 0).any() or (a["left"][inner] >= n).any()
                    or (a["right"][inner] < 0).any() or (a["right"][inner] >= n).any())):
            raise ValueError("trees ranker: node arrays are inconsistent")
        # children must point forward: traversal then ends (no cycles) within n steps
        idx = np.flatnonzero(inner)
        if ((a["left"][idx] <= idx).any() or (a["right"][idx] <= idx).any()):
            raise ValueError("trees ranker: a child precedes its parent")
        self._nav = (np.where(inner, a["feature"], 0), a["threshold"], a["missing_left"],
                     a["left"], a["right"], a["is_leaf"])

    # -- scoring ------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(engage) float64 [n] for X float [n, len(features)]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"X has shape {x.shape}, want (n, {len(self.features)}) for "
                             f"features {self.features}")
        return _sigmoid(self.decision_function(x))

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """The raw score (log-odds) per row."""
        x = np.asarray(x, dtype=np.float64)
        a = self.arrays
        if self.kind == "linear":
            z = np.nan_to_num((x - a["mean"]) / a["scale"], nan=0.0)
            out: np.ndarray = z @ a["weights"] + a["bias"][0]
            return out
        n, d = x.shape
        feat, thr, ml, left, right, leaf = self._nav
        t = a["roots"].shape[0]
        node = np.tile(a["roots"], n)  # flat [n * trees], row-major: (row, tree)
        offset = np.repeat(np.arange(n, dtype=np.int64) * d, t)
        flat = x.reshape(-1)
        act = np.flatnonzero(~leaf[node])
        while act.size:  # only the paths still inside a tree: cost ~ total path length
            nd = node[act]
            v = flat[offset[act] + feat[nd]]
            nxt = np.where((v <= thr[nd]) | (np.isnan(v) & ml[nd]), left[nd], right[nd])
            node[act] = nxt
            act = act[~leaf[nxt]]
        node = node.reshape(n, t)
        leaves = a["value"][node]
        # baseline, then each tree in order: the summation order sklearn uses
        raw = np.full(n, a["baseline"][0])
        for t in range(leaves.shape[1]):
            raw += leaves[:, t]
        return raw

    def score(self, features: np.ndarray, names: Sequence[str] = FEATURES) -> np.ndarray:
        """P(engage) for a matrix whose columns are ``names`` (default the hybrid FEATURES):
        the ranker's own features are picked by name."""
        pos = {n: i for i, n in enumerate(names)}
        try:
            idx = [pos[f] for f in self.features]
        except KeyError as exc:
            raise ValueError(f"the ranker needs feature {exc.args[0]!r}, not among {tuple(names)}"
                             ) from None
        return self.predict(np.asarray(features, dtype=np.float64)[:, idx])

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: Path | str, attach: Callable[[Path], Any] | None = None,
             **meta: Any) -> dict[str, Any]:
        """Write ``ranker.json`` + ``arrays.npz`` to ``folder`` atomically; ``meta`` (e.g.
        trained_on, metrics, params) is recorded too; ``attach(tmp)`` may write more files
        (the sequence model) into the unfinished folder before the swap.  Returns the
        metadata written."""
        out = Path(folder)
        if out.exists() and any(out.iterdir()) and not (out / META_FILE).is_file():
            raise StateError(f"{out} exists and is not a ranker directory; choose another --out")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            arrays_path = tmp / ARRAYS_FILE
            with arrays_path.open("wb") as fh:
                np.savez(fh, allow_pickle=False, **self.arrays)
            info = dict(self.meta)
            info.update(meta)
            info.update(format=FORMAT, kind=self.kind, features=list(self.features),
                        arrays_file=ARRAYS_FILE, arrays_sha256=sha256_file(arrays_path))
            info.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
            info.setdefault("trained_on", None)
            info.setdefault("metrics", {})
            (tmp / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True,
                                                    default=_json_default) + "\n")
            if attach is not None:
                attach(tmp)
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.meta = info
        return info

    @classmethod
    def load(cls, folder: Path | str) -> Ranker:
        """Read a ranker directory; StateError (one line) when it cannot be used."""
        folder = Path(folder)
        label = f"ranker directory {folder}"
        meta = read_meta(folder, META_FILE, FORMAT, label)
        arrays_path = verified_file(folder, meta, ARRAYS_FILE, label)
        try:
            with np.load(arrays_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            return cls(str(meta.get("kind")), [str(f) for f in meta.get("features", [])],
                       arrays, meta)
        except (OSError, ValueError) as exc:
            raise StateError(f"ranker directory {folder}: {exc}") from exc

    def describe(self) -> dict[str, Any]:
        """kind, features and the recorded metadata (for ``/stats`` and logs)."""
        n_trees = int(self.arrays["roots"].shape[0]) if self.kind == "trees" else 0
        return {"kind": self.kind, "features": list(self.features), "trees": n_trees,
                **{k: self.meta[k] for k in ("trained_on", "metrics", "created") if k in self.meta}}


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# -- constructors / exporters -----------------------------------------------------------------
#: hand-set weights of the default ranker (log-odds per unit of each FEATURES column): the
#: collaborative evidence first, then content, then popularity; used without a model dir.
DEFAULT_WEIGHTS: dict[str, float] = {
    "content_sim": 2.0, "covis_score": 1.5, "covis_recency": 0.3, "pop_short": 0.4,
    "pop_long": 0.2, "trend": 0.1, "own_recency": 0.0, "category_match": 0.5,
    "bandit_mean": 0.0, "since_last": 0.0, "history_len": 0.0, "seq_lift": 0.5, "fresh": 0.0,
    "src_content": 0.2, "src_covis": 0.5, "src_trending": 0.0,
    "src_buy_again": 0.5, "src_sequence": 0.2,
}


def linear_ranker(weights: Mapping[str, float], bias: float = 0.0,
                  mean: Mapping[str, float] | None = None,
                  scale: Mapping[str, float] | None = None, **meta: Any) -> Ranker:
    """A linear ranker from named weights (features = the names, in the given order)."""
    names = list(weights)
    return Ranker("linear", names, {
        "weights": np.array([weights[n] for n in names], dtype=np.float64),
        "mean": np.array([(mean or {}).get(n, 0.0) for n in names], dtype=np.float64),
        "scale": np.array([(scale or {}).get(n, 1.0) for n in names], dtype=np.float64),
        "bias": np.array([bias], dtype=np.float64)}, meta)


def default_ranker() -> Ranker:
    """The ranker served without a model directory (hand-set, untrained)."""
    assert tuple(DEFAULT_WEIGHTS) == FEATURES
    return linear_ranker(DEFAULT_WEIGHTS, bias=-4.0, trained_on=None, metrics={},
                         note="default hand-set weights (no model directory)")


def export_logistic(estimator: Any, features: Sequence[str], mean: Sequence[float] | None = None,
                    scale: Sequence[float] | None = None, **meta: Any) -> Ranker:
    """A fitted binary logistic regression (duck-typed: ``coef_`` [1, d], ``intercept_`` [1],
    ``classes_``), optionally trained on standardised inputs ``(x - mean) / scale`` (e.g. a
    StandardScaler's ``mean_`` and ``scale_``)."""
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    d = len(features)
    if coef.shape != (1, d):
        raise ValueError(f"coef_ has shape {coef.shape}, want (1, {d}) (binary, one per feature)")
    if len(getattr(estimator, "classes_", [0, 1])) != 2:
        raise ValueError("only binary classifiers can be exported")
    return Ranker("linear", features, {
        "weights": coef[0],
        "mean": np.zeros(d) if mean is None else np.asarray(mean, dtype=np.float64),
        "scale": np.ones(d) if scale is None else np.asarray(scale, dtype=np.float64),
        "bias": np.asarray(estimator.intercept_, dtype=np.float64).reshape(-1)[:1]}, meta)


def export_hist_gradient_boosting(estimator: Any, features: Sequence[str], **meta: Any) -> Ranker:
    """A fitted binary ``HistGradientBoostingClassifier`` (duck-typed) as a trees ranker.

    Reads ``_predictors`` (per iteration, one TreePredictor whose ``nodes`` record array has
    value / feature_idx / num_threshold / missing_go_to_left / left / right / is_leaf /
    is_categorical) and ``_baseline_prediction``.  Categorical splits and pandas-categorical
    preprocessing are not supported (ValueError).
    """
    predictors = getattr(estimator, "_predictors", None)
    if predictors is None:
        raise ValueError("the estimator is not fitted (no _predictors)")
    if getattr(estimator, "n_trees_per_iteration_", 1) != 1 or \
            len(getattr(estimator, "classes_", [0, 1])) != 2:
        raise ValueError("only binary classifiers (one tree per iteration) can be exported")
    if getattr(estimator, "_preprocessor", None) is not None:
        raise ValueError("estimators with categorical preprocessing cannot be exported")
    n_in = getattr(estimator, "n_features_in_", len(features))
    if n_in != len(features):
        raise ValueError(f"the estimator has {n_in} features, {len(features)} names given")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in _TREE_ARRAYS[:-2]}
    roots: list[int] = []
    offset = 0
    for iteration in predictors:
        (pred,) = iteration
        nodes = pred.nodes
        if "is_categorical" in nodes.dtype.names and nodes["is_categorical"].any():
            raise ValueError("categorical splits cannot be exported")
        k = nodes.shape[0]
        leaf = nodes["is_leaf"].astype(bool)
        roots.append(offset)
        cols["feature"].append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64))
        cols["threshold"].append(nodes["num_threshold"].astype(np.float64))
        cols["missing_left"].append(nodes["missing_go_to_left"].astype(bool))
        cols["is_leaf"].append(leaf)
        cols["left"].append(np.where(leaf, 0, nodes["left"].astype(np.int64) + offset))
        cols["right"].append(np.where(leaf, 0, nodes["right"].astype(np.int64) + offset))
        cols["value"].append(nodes["value"].astype(np.float64))
        offset += k
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    arrays["roots"] = np.asarray(roots, dtype=np.int64)
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)
    if baseline.shape != (1,) or not math.isfinite(float(baseline[0])):
        raise ValueError(f"unexpected baseline prediction {baseline!r}")
    arrays["baseline"] = baseline
    meta.setdefault("params", _params(estimator))
    return Ranker("trees", features, arrays, meta)


def _params(estimator: Any) -> dict[str, Any]:
    get = getattr(estimator, "get_params", None)
    if get is None:
        return {}
    out: dict[str, Any] = {}
    for k, v in get().items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
    out["n_iter"] = int(getattr(estimator, "n_iter_", 0))
    return out
