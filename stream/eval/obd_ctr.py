"""Click prediction on the Open Bandit Dataset: the CTR ranker's logloss and AUC on real clicks.

``profiles ranker eval-obd`` runs :func:`run` on the OBD sample that ships in the obp 0.5.7 sdist
(fetched like ``profiles data obd``, never committed).  Protocol:

* **Data.** The *random*-policy logs of the three campaigns (all / men / women, 10,000
  impressions each) are pooled.  The campaigns have disjoint item sets, so an item is keyed
  ``<population>:<item_id>``.  A row is one impression (``click`` 0/1); its identity is the
  event id ``profiles data obd`` gives it (``obd-random-<population>-<row>``).
* **Split by time.** Rows sorted by timestamp: the earliest 70 % train, the next 10 %
  validation, the last 20 % test.  A cut never falls inside a group of equal timestamps, so
  every training row is strictly older than every test row.
* **Features** the stream has at serving time (:data:`FEATURES`): the position; the item's
  smoothed CTR ``(clicks + a * prior) / (impressions + a)`` (prior = the global CTR); the
  bandit posterior mean ``(alpha + clicks) / (alpha + beta + impressions)`` with the stream's
  Beta prior (:class:`stream.core.bandit.BanditParams`) from the same counts; the item's
  impressions (popularity, log1p); the four hashed user features and the three hashed
  item-context features, each target-encoded (smoothed CTR of its value); the user's affinity to
  the shown item and the sum of the user's affinities; ``item_feature_0`` (numeric); the
  campaign.  Every count comes from the rows a model is fitted on and nothing else: for those
  rows themselves out-of-fold (5 folds, counts rescaled to the full size) so that a row never
  sees its own click; for the rows scored, the counts of all fitted rows.
* **Models:** logistic regression (standardised features) and scikit-learn's
  HistGradientBoostingClassifier, a small grid each, fitted on train and compared by
  validation logloss; the best of each family and the smoothing ``a`` (chosen for the per-item
  CTR baseline on validation) are then refitted on train + validation and scored on test.
  **Baselines** (also from train + validation): global CTR, position-only CTR, smoothed per-item
  CTR.
* **Metrics** on test: logloss and AUC (ties count half), each with a percentile bootstrap 95 %
  CI over test rows, and the paired difference against the position-only baseline on the same
  resamples; the number of rows and of positives in every split.

The chosen model (lowest validation logloss of the two families) is the ranker: it is converted
to a :class:`stream.core.ranker.Ranker` (numpy arrays, no pickle), checked to reproduce the
fitted model's test predictions, and with ``--model-out DIR`` saved as a ranker directory.  Its
features are OBD's (hashed user and item-context features the stream does not have), so the
directory documents the OBD model; it is not a ranker for the hybrid's candidate features.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.bandit import BanditParams
from stream.core.errors import DataError
from stream.core.ranker import Ranker, export_hist_gradient_boosting, export_logistic
from stream.data.obd import POPULATIONS, fetch_obd, member, read_rows, read_tar_text, ts_ms

__all__ = [
    "FEATURES",
    "EvalConfig",
    "ObdFrame",
    "ObdResult",
    "Split",
    "auc",
    "evaluate",
    "format_table",
    "frame_from_rows",
    "load_random",
    "logloss",
    "run",
    "smoothed_ctr",
    "time_split",
    "to_ranker",
]

CAMPAIGN = "random"
N_USER = 4
N_ITEM_CAT = 3
FEATURES: tuple[str, ...] = (
    "position",
    "item_ctr",
    "bandit_mean",
    "item_log_impressions",
    *(f"user_feature_{j}_ctr" for j in range(N_USER)),
    "affinity_item",
    "affinity_sum",
    "item_feature_0",
    *(f"item_feature_{j + 1}_ctr" for j in range(N_ITEM_CAT)),
    "population_men",
    "population_women",
)
BASELINES = ("global_ctr", "position_ctr", "item_ctr")
MODELS = ("logistic", "hgb")
EPS = 1e-15


# ------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class ObdFrame:
    """OBD impressions as columns (one entry per row)."""

    row_id: np.ndarray          # str: obd-random-<population>-<row>
    ts: np.ndarray              # int64 epoch ms
    population: np.ndarray      # str
    item: np.ndarray            # str: <population>:<item_id>
    position: np.ndarray        # int64
    click: np.ndarray           # int64, 0 / 1
    user: np.ndarray            # str [n, 4]: the hashed user features
    affinity_item: np.ndarray   # float: user-item_affinity_<shown item>
    affinity_sum: np.ndarray    # float: sum of the user's affinities
    item_num: np.ndarray        # float: item_feature_0 of the shown item
    item_cat: np.ndarray        # str [n, 3]: item_feature_1..3 of the shown item

    def __len__(self) -> int:
        return len(self.row_id)

    def take(self, idx: np.ndarray) -> ObdFrame:
        return ObdFrame(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    def with_clicks(self, click: np.ndarray) -> ObdFrame:
        return dataclasses.replace(self, click=np.asarray(click, dtype=np.int64))


def frame_from_rows(log_rows: Iterable[Mapping[str, str]], item_rows: Iterable[Mapping[str, str]],
                    population: str, campaign: str = CAMPAIGN) -> ObdFrame:
    """One campaign's log rows (the CSV's dicts) and its ``item_context.csv`` rows -> frame."""
    items = {int(r["item_id"]): r for r in item_rows}
    cols: dict[str, list[Any]] = {f.name: [] for f in dataclasses.fields(ObdFrame)}
    for i, row in enumerate(log_rows):
        item = int(row["item_id"])
        ctx = items.get(item)
        if ctx is None:
            raise DataError(f"OBD {population}: item {item} is not in item_context.csv")
        aff = [float(v) for k, v in row.items() if k and k.startswith("user-item_affinity_")]
        cols["row_id"].append(f"obd-{campaign}-{population}-{row.get('') or i}")
        cols["ts"].append(ts_ms(row["timestamp"]))
        cols["population"].append(population)
        cols["item"].append(f"{population}:{item}")
        cols["position"].append(int(row["position"]))
        cols["click"].append(int(row["click"]))
        cols["user"].append([row[f"user_feature_{j}"] for j in range(N_USER)])
        cols["affinity_item"].append(float(row.get(f"user-item_affinity_{item}") or 0.0))
        cols["affinity_sum"].append(sum(aff))
        cols["item_num"].append(float(ctx["item_feature_0"]))
        cols["item_cat"].append([ctx[f"item_feature_{j + 1}"] for j in range(N_ITEM_CAT)])
    n = len(cols["row_id"])
    return ObdFrame(
        row_id=np.array(cols["row_id"], dtype=str),
        ts=np.array(cols["ts"], dtype=np.int64),
        population=np.array(cols["population"], dtype=str),
        item=np.array(cols["item"], dtype=str),
        position=np.array(cols["position"], dtype=np.int64),
        click=np.array(cols["click"], dtype=np.int64),
        user=np.array(cols["user"], dtype=str).reshape(n, N_USER),
        affinity_item=np.array(cols["affinity_item"], dtype=np.float64),
        affinity_sum=np.array(cols["affinity_sum"], dtype=np.float64),
        item_num=np.array(cols["item_num"], dtype=np.float64),
        item_cat=np.array(cols["item_cat"], dtype=str).reshape(n, N_ITEM_CAT),
    )


def concat(frames: Sequence[ObdFrame]) -> ObdFrame:
    return ObdFrame(**{f.name: np.concatenate([getattr(fr, f.name) for fr in frames])
                       for f in dataclasses.fields(ObdFrame)})


def load_random(sdist: Path | str, populations: Sequence[str] = POPULATIONS) -> ObdFrame:
    """The random-policy logs of ``populations``, pooled, from the obp sdist."""
    frames = []
    for pop in populations:
        log = read_tar_text(sdist, member(CAMPAIGN, pop))
        ctx = read_tar_text(sdist, member(CAMPAIGN, pop, "item_context.csv"))
        frames.append(frame_from_rows(read_rows(log), read_rows(ctx), pop))
    return concat(frames)


# ----------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class Split:
    """Row indices (into the frame) of each part; ``fit`` = train + validation."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def fit(self) -> np.ndarray:
        return np.concatenate([self.train, self.val])


def time_split(ts: np.ndarray, row_id: np.ndarray,
               fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> Split:
    """Earliest ``fractions[0]`` train, next ``fractions[1]`` validation, the rest test.

    Rows are ordered by (ts, row id); a cut is moved forward past a group of equal timestamps so
    that parts never share a timestamp."""
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    n = len(ts)
    order = np.lexsort((row_id, ts))
    sts = np.asarray(ts)[order]

    def cut(k: int) -> int:
        if k <= 0 or k >= n:
            return min(max(k, 0), n)
        return int(np.searchsorted(sts, sts[k - 1], side="right"))

    a = cut(round(n * fractions[0]))
    b = max(a, cut(round(n * (fractions[0] + fractions[1]))))
    split = Split(train=order[:a], val=order[a:b], test=order[b:])
    if not (len(split.train) and len(split.val) and len(split.test)):
        raise DataError(f"time split of {n} rows left a part empty "
                        f"({len(split.train)}/{len(split.val)}/{len(split.test)})")
    return split


# -------------------------------------------------------------------------------- encoders
def counts(fit_keys: np.ndarray, fit_y: np.ndarray, keys: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """(clicks, impressions) of each of ``keys`` among the fitted rows (0, 0 when unseen)."""
    uniq, inv = np.unique(np.concatenate([fit_keys, keys]), return_inverse=True)
    fi, ai = inv[:len(fit_keys)], inv[len(fit_keys):]
    c = np.bincount(fi, weights=np.asarray(fit_y, dtype=np.float64), minlength=len(uniq))
    m = np.bincount(fi, minlength=len(uniq)).astype(np.float64)
    return c[ai], m[ai]


def smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray, a: float,
                 prior: float | np.ndarray) -> np.ndarray:
    """``(clicks + a * prior) / (impressions + a)``."""
    return (clicks + a * prior) / (impressions + a)


def oof_counts(keys: np.ndarray, y: np.ndarray, folds: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (clicks, impressions) of each row, rescaled to the whole set's size."""
    c = np.zeros(len(keys))
    m = np.zeros(len(keys))
    k = int(folds.max()) + 1
    for f in range(k):
        inside = folds == f
        c[inside], m[inside] = counts(keys[~inside], y[~inside], keys[inside])
    scale = k / (k - 1)
    return c * scale, m * scale


def _fold_ids(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % k


def features(frame: ObdFrame, fit: np.ndarray, apply: np.ndarray, a: float, *, folds: int = 5,
             seed: int = 0, bandit: BanditParams | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrices (columns :data:`FEATURES`) of the fitted rows (out-of-fold counts) and
    of the rows to score (counts of all fitted rows).  Reads clicks of ``fit`` rows only."""
    bandit = bandit or BanditParams()
    y = frame.click[fit].astype(np.float64)
    prior = float(y.mean()) if len(y) else 0.0
    fold = _fold_ids(len(fit), folds, seed)
    # the fitted rows' prior is out-of-fold too: a row's own click moves none of its features
    prior_f = np.empty(len(fit))
    for f in range(folds):
        prior_f[fold == f] = y[fold != f].mean()
    xf: list[np.ndarray] = []
    xa: list[np.ndarray] = []

    def encoded(keys: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray],
                                           tuple[np.ndarray, np.ndarray]]:
        return oof_counts(keys[fit], y, fold), counts(keys[fit], y, keys[apply])

    def both(col: np.ndarray) -> None:
        xf.append(np.asarray(col, dtype=np.float64)[fit])
        xa.append(np.asarray(col, dtype=np.float64)[apply])

    def ctr(keys: np.ndarray) -> None:
        (cf, mf), (ca, ma) = encoded(keys)
        xf.append(smoothed_ctr(cf, mf, a, prior_f))
        xa.append(smoothed_ctr(ca, ma, a, prior))

    both(frame.position)
    (cf, mf), (ca, ma) = encoded(frame.item)
    ab = bandit.prior_alpha + bandit.prior_beta
    for out, (c, m), pr in ((xf, (cf, mf), prior_f), (xa, (ca, ma), prior)):
        out.append(smoothed_ctr(c, m, a, pr))
        out.append((bandit.prior_alpha + c) / (ab + m))
        out.append(np.log1p(m))
    for j in range(N_USER):
        ctr(frame.user[:, j])
    both(frame.affinity_item)
    both(frame.affinity_sum)
    both(frame.item_num)
    for j in range(N_ITEM_CAT):
        ctr(frame.item_cat[:, j])
    both(frame.population == "men")
    both(frame.population == "women")
    return np.column_stack(xf), np.column_stack(xa)


# ------------------------------------------------------------------------------- baselines
def baselines(frame: ObdFrame, fit: np.ndarray, apply: np.ndarray, a: float
              ) -> dict[str, np.ndarray]:
    """P(click) of the ``apply`` rows by each baseline, from the clicks of the ``fit`` rows."""
    y = frame.click[fit].astype(np.float64)
    prior = float(y.mean())
    pc, pm = counts(frame.position[fit], y, frame.position[apply])
    ic, im = counts(frame.item[fit], y, frame.item[apply])
    return {
        "global_ctr": np.full(len(apply), prior),
        # one pseudo-impression at the prior: thousands of rows per position, it only avoids 0/0
        "position_ctr": smoothed_ctr(pc, pm, 1.0, prior),
        "item_ctr": smoothed_ctr(ic, im, a, prior),
    }


# ---------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class EvalConfig:
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    smoothing_grid: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
    logistic_c: tuple[float, ...] = (0.0001, 0.001, 0.01, 0.1, 1.0)
    # (max_iter, max_leaf_nodes, min_samples_leaf) at learning rate 0.05, L2 1.0: ~100
    # positives in training, so small, heavily regularised trees
    hgb_grid: tuple[tuple[int, int, int], ...] = (
        (30, 4, 400), (60, 4, 400), (100, 8, 200), (200, 8, 200))
    folds: int = 5
    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0


def _model(kind: str, param: Any, seed: int) -> Any:
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=float(param), max_iter=5000))
    from sklearn.ensemble import HistGradientBoostingClassifier

    it, leaves, leaf = param
    return HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=it, max_leaf_nodes=leaves, min_samples_leaf=leaf,
        l2_regularization=1.0, early_stopping=False, random_state=seed)


def _grid(cfg: EvalConfig, kind: str) -> list[Any]:
    return list(cfg.logistic_c) if kind == "logistic" else list(cfg.hgb_grid)


def _label(kind: str, param: Any) -> str:
    if kind == "logistic":
        return f"logistic C={param:g}"
    it, leaves, leaf = param
    return f"hgb iter={it} leaves={leaves} min_leaf={leaf}"


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(x)[:, 1], dtype=np.float64)


# --------------------------------------------------------------------------------- metrics
def logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _row_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    out: np.ndarray = np.where(np.asarray(y) == 1, -np.log(p), -np.log1p(-p))
    return out


def _weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC under row weights ``w`` ([n] or [B, n]); a tie between a positive and a negative
    counts one half.  NaN where a weighting has no positive or no negative."""
    w2 = np.atleast_2d(np.asarray(w, dtype=np.float64))
    order = np.argsort(p, kind="stable")
    ps = np.asarray(p)[order]
    ys = np.asarray(y)[order] == 1
    ws = w2[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = np.add.reduceat(ws * ys, starts, axis=1)      # [B, groups]
    neg = np.add.reduceat(ws * ~ys, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    return float(_weighted_auc(y, p, np.ones(len(y)))[0])


def _ci(values: np.ndarray, level: float) -> list[float]:
    v = values[np.isfinite(values)]
    if not len(v):
        return [math.nan, math.nan]
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap(y: np.ndarray, preds: Mapping[str, np.ndarray], reference: str, n_boot: int,
              level: float, seed: int) -> dict[str, dict[str, Any]]:
    """Logloss and AUC with percentile CIs over resampled rows, and the paired difference of
    each against ``reference`` on the same resamples."""
    n = len(y)
    rng = np.random.default_rng(seed)
    w = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]
                 ).astype(np.float64)
    ll = {k: w @ _row_loss(y, p) / n for k, p in preds.items()}
    au = {k: _weighted_auc(y, p, w) for k, p in preds.items()}
    out: dict[str, dict[str, Any]] = {}
    for k, p in preds.items():
        out[k] = {
            "logloss": logloss(y, p), "logloss_ci": _ci(ll[k], level),
            "auc": auc(y, p), "auc_ci": _ci(au[k], level),
            "n": int(n), "positives": int(np.sum(y)),
        }
        if k != reference:
            out[k][f"vs_{reference}"] = {
                "logloss_diff": out[k]["logloss"] - logloss(y, preds[reference]),
                "logloss_diff_ci": _ci(ll[k] - ll[reference], level),
                "auc_diff": out[k]["auc"] - auc(y, preds[reference]),
                "auc_diff_ci": _ci(au[k] - au[reference], level),
            }
    return out


# ------------------------------------------------------------------------------ evaluation
@dataclass
class ObdResult:
    report: dict[str, Any]
    split: Split
    test_predictions: dict[str, np.ndarray]
    validation_predictions: dict[str, np.ndarray]
    model: Any                      # the chosen fitted sklearn estimator (fit = train + val)
    kind: str                       # "logistic" or "hgb"
    x_test: np.ndarray              # the test rows' features (columns FEATURES)
    feature_names: tuple[str, ...] = FEATURES
    fitted: dict[str, Any] = field(default_factory=dict)   # both families, refitted


def _part(frame: ObdFrame, idx: np.ndarray) -> dict[str, Any]:
    ts = frame.ts[idx]
    return {"rows": int(len(idx)), "positives": int(frame.click[idx].sum()),
            "from": _iso(int(ts.min())), "to": _iso(int(ts.max()))}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def check_disjoint(frame: ObdFrame, split: Split) -> None:
    """Raise when a test row is also a fitted row, by identity or by time."""
    fit = split.fit
    shared = np.intersect1d(frame.row_id[fit], frame.row_id[split.test])
    if len(shared) or len(np.intersect1d(fit, split.test)):
        raise DataError(f"{len(shared)} test rows are also training rows")
    if frame.ts[fit].max() >= frame.ts[split.test].min():
        raise DataError("a training row is not older than every test row")


def evaluate(frame: ObdFrame, cfg: EvalConfig | None = None,
             progress: Callable[[str], None] | None = None) -> ObdResult:
    """Select on validation, refit on train + validation, score the test rows."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    # one thread: the data are small, and OpenMP threads on a shared machine spin (HGB was 7x
    # slower with 2 busy cores than with one thread)
    with threadpool_limits(limits=1):
        return _evaluate(frame, cfg or EvalConfig(), progress or (lambda _msg: None))


def _evaluate(frame: ObdFrame, cfg: EvalConfig, say: Callable[[str], None]) -> ObdResult:
    split = time_split(frame.ts, frame.row_id, cfg.fractions)
    check_disjoint(frame, split)
    if frame.click[split.train].sum() == 0:
        raise DataError("no click in the training part")
    y_val = frame.click[split.val]

    # 1. selection on validation: models (and the baseline's smoothing) fitted on train only
    smooth_ll = {a: logloss(y_val, baselines(frame, split.train, split.val, a)["item_ctr"])
                 for a in cfg.smoothing_grid}
    a = min(smooth_ll, key=lambda k: (smooth_ll[k], k))
    say(f"smoothing a={a:g} (validation logloss {smooth_ll[a]:.5f})")
    xt, xv = features(frame, split.train, split.val, a, folds=cfg.folds, seed=cfg.seed)
    yt = frame.click[split.train]
    val_ll: dict[str, float] = {}
    best: dict[str, tuple[float, Any]] = {}
    val_preds = baselines(frame, split.train, split.val, a)
    for kind in MODELS:
        for param in _grid(cfg, kind):
            p = _predict(_model(kind, param, cfg.seed).fit(xt, yt), xv)
            ll = logloss(y_val, p)
            val_ll[_label(kind, param)] = ll
            say(f"validation {_label(kind, param)}: logloss {ll:.5f}")
            if kind not in best or ll < best[kind][0]:
                best[kind] = (ll, param)
                val_preds[kind] = p
    chosen = min(MODELS, key=lambda k: best[k][0])

    # 2. refit on train + validation, score test
    fit = split.fit
    xf, xs = features(frame, fit, split.test, a, folds=cfg.folds, seed=cfg.seed)
    yf = frame.click[fit]
    preds = baselines(frame, fit, split.test, a)
    fitted: dict[str, Any] = {}
    for kind in MODELS:
        fitted[kind] = _model(kind, best[kind][1], cfg.seed).fit(xf, yf)
        preds[kind] = _predict(fitted[kind], xs)
    y_test = frame.click[split.test]
    methods = bootstrap(y_test, preds, "position_ctr", cfg.n_boot, cfg.level, cfg.seed)
    report: dict[str, Any] = {
        "data": {"source": f"Open Bandit Dataset (obp 0.5.7 sdist), {CAMPAIGN} policy, "
                           f"campaigns pooled: {', '.join(sorted(set(frame.population)))}",
                 "rows": int(len(frame)), "positives": int(frame.click.sum())},
        "split": {"by": "timestamp", "fractions": list(cfg.fractions),
                  "train": _part(frame, split.train), "validation": _part(frame, split.val),
                  "test": _part(frame, split.test),
                  "refit_on": "train+validation", "test_rows_in_training": 0},
        "features": list(FEATURES),
        "selection": {"item_ctr_smoothing": a,
                      "smoothing_validation_logloss": {f"{k:g}": v for k, v in smooth_ll.items()},
                      "validation_logloss": val_ll,
                      "validation_baselines": {k: logloss(y_val, val_preds[k])
                                               for k in BASELINES},
                      "validation": {"rows": int(len(y_val)),
                                     "positives": int(y_val.sum())},
                      "best": {k: _label(k, best[k][1]) for k in MODELS},
                      "chosen": chosen},
        "bootstrap": {"resamples": cfg.n_boot, "level": cfg.level, "seed": cfg.seed,
                      "unit": "test row"},
        "methods": methods,
    }
    return ObdResult(report=report, split=split, test_predictions=preds,
                     validation_predictions=val_preds, model=fitted[chosen], kind=chosen,
                     x_test=xs, fitted=fitted)


# --------------------------------------------------------------------------------- ranker
def to_ranker(result: ObdResult, kind: str | None = None) -> Ranker:
    """A fitted model (default: the chosen one) as a :class:`stream.core.ranker.Ranker`."""
    kind = kind or result.kind
    model = result.fitted[kind]
    test = result.report["methods"][kind]
    meta = {"trained_on": "Open Bandit Dataset, random campaigns all+men+women pooled: the "
                          "earliest 80 % by time (train + validation)",
            "metrics": {"obd_test_logloss": test["logloss"], "obd_test_auc": test["auc"],
                        "obd_test_rows": test["n"], "obd_test_positives": test["positives"]},
            "selection": result.report["selection"]["best"][kind]}
    if kind == "logistic":
        scaler, lr = model[0], model[-1]
        return export_logistic(lr, result.feature_names, mean=scaler.mean_, scale=scaler.scale_,
                               **meta)
    return export_hist_gradient_boosting(model, result.feature_names, **meta)


def export_ranker(result: ObdResult, out: Path | str | None) -> dict[str, Any]:
    """Convert the chosen model to a Ranker, check it reproduces the model's test predictions,
    and save it to ``out`` (a ranker directory) when given."""
    r = to_ranker(result)
    diff = float(np.max(np.abs(r.predict(result.x_test) - result.test_predictions[result.kind])))
    info: dict[str, Any] = {"kind": result.kind, "ranker_kind": r.kind,
                            "features": list(result.feature_names),
                            "max_abs_diff_vs_sklearn_on_test": diff, "exported": None}
    if diff > 1e-9:
        raise DataError(f"the exported {r.kind} ranker differs from the fitted model by {diff:g}")
    if out is not None:
        r.save(Path(out))
        info["exported"] = str(out)
    else:
        info["note"] = "kept in memory (pass --model-out DIR to save it as a ranker directory)"
    return info


# ------------------------------------------------------------------------------------ CLI
NAMES = {"global_ctr": "global CTR", "position_ctr": "position-only CTR",
         "item_ctr": "smoothed per-item CTR", "logistic": "logistic regression",
         "hgb": "HistGradientBoosting"}


def format_table(report: Mapping[str, Any]) -> str:
    sp = report["split"]
    lines = [
        f"{report['data']['source']}: {report['data']['rows']} impressions, "
        f"{report['data']['positives']} clicks",
        "split by time: " + ", ".join(
            f"{k} {sp[k]['rows']} rows / {sp[k]['positives']} clicks "
            f"({sp[k]['from'][:16]} .. {sp[k]['to'][:16]})" for k in ("train", "validation", "test"))
        + "; no test row in training; models refitted on train+validation",
        f"selection (validation logloss): chosen {report['selection']['chosen']}; best "
        + ", ".join(report["selection"]["best"].values())
        + f"; per-item smoothing a={report['selection']['item_ctr_smoothing']:g}",
        "",
        f"{'method':<24} {'logloss [95% CI]':<30} {'AUC [95% CI]':<26} "
        f"{'dlogloss vs position [CI]':<34} {'n':>6} {'pos':>4}",
    ]
    for k, m in report["methods"].items():
        name = NAMES.get(k, k) + (" *" if k == report["selection"]["chosen"] else "")
        ll = f"{m['logloss']:.5f} [{m['logloss_ci'][0]:.5f}, {m['logloss_ci'][1]:.5f}]"
        au = f"{m['auc']:.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]"
        vs = m.get("vs_position_ctr")
        d = (f"{vs['logloss_diff']:+.5f} [{vs['logloss_diff_ci'][0]:+.5f}, "
             f"{vs['logloss_diff_ci'][1]:+.5f}]") if vs else "-"
        lines.append(f"{name:<24} {ll:<30} {au:<26} {d:<34} {m['n']:>6} {m['positives']:>4}")
    lines.append("* the chosen ranker (lowest validation logloss)")
    if "ranker" in report:
        r = report["ranker"]
        lines.append(f"ranker: {r['kind']}, " + (f"saved to {r['exported']}" if r["exported"]
                                                  else r.get("note", "not saved")))
    return "\n".join(lines)


def run(data_dir: Path | str, cfg: EvalConfig | None = None,
        model_out: Path | str | None = None) -> dict[str, Any]:
    """Fetch (cached in ``data_dir``), evaluate, export the ranker if asked: the report."""
    try:
        sdist = fetch_obd(data_dir)
    except RuntimeError as exc:
        raise DataError(str(exc)) from None
    result = evaluate(load_random(sdist), cfg)
    result.report["data"]["sdist"] = str(sdist)
    result.report["ranker"] = export_ranker(result, model_out)
    return result.report
