"""Fitting the CTR ranker (``stream.core.ranker.Ranker``) on hybrid candidates.

Training rows: the candidates ``stream.core.hybrid.generate`` returns for each validation
query, label 1 when the candidate is one of the query's targets.  Negatives are subsampled to
at most ``neg_per_query`` per query (seeded); positives are all kept.

Two families, a small grid each: logistic regression on standardised features, and
scikit-learn's HistGradientBoostingClassifier.  Choice by measurement: 2-fold cross-validation
over users on the validation queries, by the mean expected Recall@20 of the targets (a target
that is not a candidate ranks below every candidate; ties at their expected rank); logloss and
AUC of each fold's held-out candidates are reported beside it.  The chosen configuration is
refitted on all validation rows and exported to plain arrays (no pickle).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.ranker import Ranker, export_hist_gradient_boosting, export_logistic
from stream.eval.metrics import expected_metrics, quantise

LINEAR_GRID: tuple[float, ...] = (0.1, 1.0)
TREE_GRID: tuple[dict[str, Any], ...] = (
    {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 50},
    {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 7, "min_samples_leaf": 200},
)


@dataclass
class CandidateSet:
    """Candidates of many queries, flattened: a row per candidate."""

    x: np.ndarray  # float64 [rows, features]
    y: np.ndarray  # int8 [rows]: 1 = a target
    query: np.ndarray  # int64 [rows]: index of the query
    user: np.ndarray  # int64 [queries]
    n_targets: np.ndarray  # int64 [queries]: targets of the query (candidates or not)
    n_rankable: np.ndarray  # int64 [queries]: items that can be ranked (not excluded)
    features: tuple[str, ...]
    sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))

    @property
    def n_queries(self) -> int:
        return len(self.user)

    def subset_queries(self, keep: np.ndarray) -> CandidateSet:
        """The rows of the queries with ``keep[query]`` (query indices renumbered)."""
        new_index = np.cumsum(keep) - 1
        rows = keep[self.query]
        return CandidateSet(self.x[rows], self.y[rows], new_index[self.query[rows]],
                            self.user[keep], self.n_targets[keep], self.n_rankable[keep],
                            self.features, self.sources[rows] if len(self.sources) else
                            self.sources)

    def columns(self, names: Sequence[str]) -> CandidateSet:
        idx = [self.features.index(n) for n in names]
        return CandidateSet(self.x[:, idx], self.y, self.query, self.user, self.n_targets,
                            self.n_rankable, tuple(names), self.sources)


def query_recall(cs: CandidateSet, scores: np.ndarray, k: int = 20) -> np.ndarray:
    """Expected Recall@k per target (candidates and missed targets), from candidate scores."""
    out: list[np.ndarray] = []
    order = np.argsort(cs.query, kind="stable")
    bounds = np.searchsorted(cs.query[order], np.arange(cs.n_queries + 1))
    for q in range(cs.n_queries):
        rows = order[bounds[q]:bounds[q + 1]]
        n_t = int(cs.n_targets[q])
        if n_t == 0:
            continue
        s = quantise(scores[rows])[0] if len(rows) else np.zeros(0)
        pos = s[cs.y[rows] == 1]
        srt = np.sort(s)
        g = len(srt) - np.searchsorted(srt, pos, "right")
        e = np.searchsorted(srt, pos, "right") - np.searchsorted(srt, pos, "left") - 1
        missed = n_t - len(pos)
        if missed:
            # below every candidate, tied with every other non-candidate rankable item
            rest = int(cs.n_rankable[q]) - len(rows)
            g = np.r_[g, np.full(missed, len(rows))]
            e = np.r_[e, np.full(missed, max(rest - 1, 0))]
        out.append(expected_metrics(g, e, (k,))[f"recall@{k}"])
    return np.concatenate(out) if out else np.zeros(0)


def logloss_auc(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Log loss (probabilities clipped to [1e-15, 1 - 1e-15]) and AUC (ties count half)."""
    from scipy.stats import rankdata

    p = np.clip(p.astype(np.float64), 1e-15, 1 - 1e-15)
    y = y.astype(np.float64)
    ll = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    if n_pos == 0 or n_neg == 0:
        return ll, float("nan")
    r = rankdata(p)
    auc = float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return ll, auc


def _subsample(cs: CandidateSet, neg_per_query: int, seed: int) -> np.ndarray:
    """Row mask: every positive, at most ``neg_per_query`` random negatives per query."""
    rng = np.random.default_rng(seed)
    keep = cs.y == 1
    neg = np.flatnonzero(cs.y == 0)
    perm = neg[rng.permutation(len(neg))]
    q = cs.query[perm]
    order = np.argsort(q, kind="stable")
    qs = q[order]
    rank_in_q = np.arange(len(qs)) - np.searchsorted(qs, qs, "left")
    keep[perm[order[rank_in_q < neg_per_query]]] = True
    return keep


def fit_one(kind: str, setting: Any, x: np.ndarray, y: np.ndarray,
            features: Sequence[str], seed: int) -> Ranker:
    """Fit one configuration and export it as a Ranker."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    if kind == "linear":
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        est = LogisticRegression(C=float(setting), max_iter=1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit((x - mean) / scale, y)
        return export_logistic(est, list(features), mean.tolist(), scale.tolist(),
                               params={"C": float(setting)})
    est = HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **setting)
    est.fit(x, y)
    return export_hist_gradient_boosting(est, list(features))


@dataclass
class Choice:
    ranker: Ranker
    kind: str
    setting: Any
    report: list[dict]


def choose_ranker(cs: CandidateSet, kinds: Sequence[str] = ("linear", "trees"),
                  neg_per_query: int = 50, seed: int = 0,
                  linear_grid: Sequence[float] = LINEAR_GRID,
                  tree_grid: Sequence[dict[str, Any]] = TREE_GRID) -> Choice:
    """Every configuration, 2-fold CV over users; the best by mean Recall@20 is refitted on
    every validation row."""
    users = np.unique(cs.user)
    rng = np.random.default_rng(seed)
    fold_of_user = dict(zip(users.tolist(), rng.permutation(len(users)) % 2))
    qfold = np.array([fold_of_user[u] for u in cs.user.tolist()], dtype=np.int64)
    rows_fold = qfold[cs.query]
    sub = _subsample(cs, neg_per_query, seed)
    configs: list[tuple[str, Any]] = []
    if "linear" in kinds:
        configs += [("linear", c) for c in linear_grid]
    if "trees" in kinds:
        configs += [("trees", t) for t in tree_grid]
    report = []
    best: tuple[float, int] | None = None
    for ci, (kind, setting) in enumerate(configs):
        rec, ll, auc = [], [], []
        for f in (0, 1):
            tr = sub & (rows_fold != f)
            if cs.y[tr].sum() == 0 or cs.y[tr].sum() == tr.sum():
                continue
            r = fit_one(kind, setting, cs.x[tr], cs.y[tr], cs.features, seed)
            held = cs.subset_queries(qfold == f)
            p = r.predict(held.x)
            rec.append(query_recall(held, p))
            a, b = logloss_auc(held.y, p)
            ll.append(a)
            auc.append(b)
        if not rec:
            continue
        mean_rec = float(np.concatenate(rec).mean())
        report.append({"kind": kind, "setting": setting, "val_recall@20": round(mean_rec, 6),
                       "val_logloss": round(float(np.mean(ll)), 6),
                       "val_auc": round(float(np.nanmean(auc)), 6)})
        if best is None or mean_rec > best[0]:
            best = (mean_rec, ci)
    if best is None:
        raise ValueError("no validation positives among the candidates: cannot fit a ranker")
    kind, setting = configs[best[1]]
    ranker = fit_one(kind, setting, cs.x[sub], cs.y[sub], cs.features, seed)
    return Choice(ranker, kind, setting, report)
