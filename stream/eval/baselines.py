"""Baselines scored by the replay: popularity (all time and recent), content profiles,
buy-again, and ItemKNN (item-item cosine trained on the training part only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stream.eval.data import EvalLog, Queries, Visibility, user_history
from stream.eval.metrics import expected_metrics, quantise, tie_counts
from stream.eval.replay import Method, Step, StreamState


def popularity() -> Method:
    """Item events of every user before the query's ts."""
    return Method("popularity", lambda st, step, p: np.broadcast_to(st.count, (len(step.idx),
                                                                               len(st.count))))


def recent_popularity(days: int) -> Method:
    """Item events of every user in the ``days`` before the query's ts."""
    return Method(f"recent_pop_{days}d",
                  lambda st, step, p: np.broadcast_to(st.windows[days],
                                                      (len(step.idx), len(st.count))))


def content(name: str, method_name: str) -> Method:
    """The user's profile (the stream's formula, ``stream.core.profile``) against every item
    vector, float32 as the worker's exact index computes it; no profile: every item ties."""

    def score(st: StreamState, step: Step, p: str) -> np.ndarray:
        n = st.ev.n_items
        items = st.vectors[name][:n]
        out = np.zeros((len(step.idx), n), dtype=np.float64)
        for r, u in enumerate(step.users.tolist()):
            v = st.profile(name, u)
            if v is not None:
                out[r] = items @ v
        return out

    return Method(method_name, score)


def buy_again(weights: Callable[[list[str]], np.ndarray] | None = None) -> Method:
    """The user's own items, by how many events the user had on them (all-items protocol)."""

    def score(st: StreamState, step: Step, p: str) -> np.ndarray:
        out = np.zeros((len(step.idx), st.ev.n_items), dtype=np.float64)
        for r, h in enumerate(step.history):
            h = h[st.ev.is_item[h]]
            np.add.at(out[r], st.ev.row[h], 1.0)
        return out

    return Method("buy_again", score, protocols=("all",))


# ------------------------------------------------------------------------------ ItemKNN

@dataclass(frozen=True)
class KnnParams:
    neighbours: int = 100  # kept per item (0: all)
    shrink: float = 0.0

    def describe(self) -> dict:
        return {"neighbours": self.neighbours, "shrink": self.shrink}


def train_matrix(ev: EvalLog, vis: Visibility) -> np.ndarray:
    """Binary users x items matrix of the trainable item events (float32)."""
    m = vis.trainable & ev.is_item
    x = np.zeros((len(ev.users), ev.n_items), dtype=np.float32)
    x[ev.user[m], ev.row[m]] = 1.0
    return x


def item_knn(x: np.ndarray, p: KnnParams) -> np.ndarray:
    """Item-item cosine (with shrinkage) of a users x items matrix, each row pruned to its top
    ``neighbours``; the diagonal is 0.  float64 [items, items]."""
    x64 = x.astype(np.float64)
    co = x64.T @ x64
    norm = np.sqrt(np.diag(co))
    sim = co / (np.outer(norm, norm) + p.shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    k = p.neighbours
    if 0 < k < sim.shape[1]:
        # keep the k largest per row; values tied with the k-th are all kept (row order free)
        kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1:k]
        sim = np.where(sim >= kth, sim, 0.0)
    return sim


def knn_scores(ev: EvalLog, sim: np.ndarray, hist: list[np.ndarray]) -> np.ndarray:
    """Per history: the sum of the similarity rows of its distinct items."""
    out = np.zeros((len(hist), ev.n_items), dtype=np.float64)
    for r, pos in enumerate(hist):
        rows = np.unique(ev.row[pos[ev.is_item[pos]]])
        if len(rows):
            out[r] = sim[rows].sum(axis=0)
    return out


def item_knn_method(sim: np.ndarray) -> Method:
    """Sum of the similarities of the user's history items (ts < t) to each item."""

    def score(st: StreamState, step: Step, p: str) -> np.ndarray:
        return knn_scores(st.ev, sim, step.history)

    return Method("itemknn", score)


# -------------------------------------------------------------- offline (history-only) scoring

def histories(ev: EvalLog, vis: Visibility, q: Queries) -> list[np.ndarray]:
    """Each query's history: the user's visible events with ts < t (global positions)."""
    return [user_history(ev, vis, int(u), int(t)) for u, t in zip(q.user.tolist(), q.ts.tolist())]


def static_recall(ev: EvalLog, q: Queries, hist: list[np.ndarray],
                  scorer: Callable[[list[np.ndarray]], np.ndarray], k: int = 20,
                  chunk: int = 512) -> tuple[float, int]:
    """Mean expected Recall@k (new-items protocol) of a scorer that needs only the queries'
    histories (batch models: ItemKNN, SASRec); used to tune them on validation queries."""
    rec: list[np.ndarray] = []
    for s in range(0, len(q), chunk):
        idx = np.arange(s, min(len(q), s + chunk))
        sc = quantise(scorer([hist[i] for i in idx]))
        for r, i in enumerate(idx.tolist()):
            tg = q.new[i]
            if len(tg) == 0:
                continue
            h = hist[i][ev.is_item[hist[i]]]
            excl = np.zeros(ev.n_items, dtype=bool)
            excl[ev.row[h]] = True
            g, e = tie_counts(sc[r], tg, excl)
            rec.append(expected_metrics(g, e, (k,))[f"recall@{k}"])
    allr = np.concatenate(rec) if rec else np.zeros(0)
    return (float(allr.mean()) if len(allr) else 0.0), len(allr)


def tune_item_knn(ev: EvalLog, vis: Visibility, val: Queries,
                  grid: list[KnnParams] | None = None) -> tuple[np.ndarray, KnnParams, list[dict]]:
    """ItemKNN trained on the training part; neighbours and shrinkage chosen by validation
    Recall@20 (new-items protocol)."""
    grid = grid or [KnnParams(k, s) for k in (5, 10, 20, 50, 200) for s in (0.0, 10.0)]
    x = train_matrix(ev, vis)
    hist = histories(ev, vis, val)
    best: tuple[float, KnnParams, np.ndarray] | None = None
    curve = []
    for p in grid:
        sim = item_knn(x, p)
        r, n = static_recall(ev, val, hist, functools.partial(knn_scores, ev, sim))
        curve.append({**p.describe(), "val_recall@20": round(r, 6), "n": n})
        if best is None or r > best[0]:
            best = (r, p, sim)
    assert best is not None
    return best[2], best[1], curve
