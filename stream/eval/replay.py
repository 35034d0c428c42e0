"""The streaming replay: the log in time order, every query scored from the state as of its ts.

A query at ``t`` sees the state built from every visible event with ``ts < t`` (all users);
the events at ``t`` are applied afterwards, with the next step.  Events between two query times
are applied as one batch (every state here depends only on the *set* of events, or, for the
co-visitation signals, on their time order, which the canonical order keeps).

``run_replay`` scores each query with each method and turns the scores into tie counts
(``stream.eval.metrics``) for the two protocols:

- ``new``: the targets the user never touched before ``t``; the user's history is excluded from
  the ranking;
- ``all``: every target; nothing excluded (repeat purchases count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.profile import ProfileParams, ProfileTable
from stream.eval.data import EvalLog, Queries, Visibility, user_history
from stream.eval.metrics import quantise, tie_counts

DAY_MS = 86_400_000
PROTOCOLS = ("new", "all")


class StreamState:
    """Popularity counts (all time and sliding windows), content profiles per encoder, and
    any extra stateful listeners (the collaborative signals), advanced in time order."""

    def __init__(self, ev: EvalLog, vis: Visibility, *, windows_days: Iterable[int] = (7, 30),
                 profiles: dict[str, np.ndarray] | None = None,
                 profile_params: ProfileParams | None = None) -> None:
        self.ev, self.vis = ev, vis
        self.pos = 0
        self.now = int(ev.ts[0]) if ev.n_events else 0
        n = ev.n_items
        self.count = np.zeros(n, dtype=np.float64)
        self.windows = {d: np.zeros(n, dtype=np.float64) for d in windows_days}
        self._wpos = dict.fromkeys(self.windows, 0)
        self.params = profile_params or ProfileParams()
        self.vectors = dict(profiles or {})
        self.tables = {name: ProfileTable(v.shape[1], self.params, capacity=len(ev.users))
                       for name, v in self.vectors.items()}
        self._weights = self.params.weight_array(ev.types)
        self._item_vis = ev.is_item & vis.visible
        self.listeners: list[Callable[[np.ndarray], None]] = []
        # per-state objects of optional methods (stream.eval.interests_eval: the interests)
        self.extras: dict[str, Any] = {}

    def advance(self, t: int) -> None:
        """Apply every visible event with ``ts < t`` not applied yet."""
        ev = self.ev
        end = int(np.searchsorted(ev.ts, t, "left"))
        self.now = t
        if end > self.pos:
            sl = np.arange(self.pos, end)
            items = sl[self._item_vis[sl]]
            np.add.at(self.count, ev.row[items], 1.0)
            for arr in self.windows.values():
                np.add.at(arr, ev.row[items], 1.0)
            vis_sl = sl[self.vis.visible[sl]]
            w = self._weights[vis_sl]
            keep = vis_sl[w > 0]
            if len(keep):
                names = [ev.users[u] for u in ev.user[keep].tolist()]
                for name, table in self.tables.items():
                    table.apply(names, ev.ts[keep], self._weights[keep],
                                self.vectors[name][ev.row[keep]])
            for fn in self.listeners:
                fn(vis_sl)
            self.pos = end
        for d, arr in self.windows.items():  # window [t - d days, t)
            wend = int(np.searchsorted(ev.ts, t - d * DAY_MS, "left"))
            wend = min(wend, self.pos)
            if wend > self._wpos[d]:
                sl = np.arange(self._wpos[d], wend)
                items = sl[self._item_vis[sl]]
                np.subtract.at(arr, ev.row[items], 1.0)
                self._wpos[d] = wend

    def profile(self, name: str, user: int) -> np.ndarray | None:
        return self.tables[name].vector(self.ev.users[user])


@dataclass
class Step:
    """The queries of one time step, with their histories."""

    idx: np.ndarray  # query indices
    users: np.ndarray
    t: int
    history: list[np.ndarray]  # global event positions (visible, ts < t), time order
    hist_items: list[np.ndarray]  # distinct visible history item rows


# A method: (state, step, protocol) -> scores [len(step.idx), n_items]; -inf = not a candidate.
Scorer = Callable[[StreamState, Step, str], np.ndarray]


@dataclass
class Method:
    name: str
    score: Scorer
    protocols: tuple[str, ...] = PROTOCOLS
    per_protocol: bool = False  # scores differ between the protocols (else computed once)


@dataclass
class Result:
    """Tie counts per method and protocol, with each case's query."""

    g: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    e: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    query: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def counts(self, method: str, protocol: str) -> tuple[np.ndarray, np.ndarray]:
        g = self.g[method][protocol]
        e = self.e[method][protocol]
        return (np.concatenate(g) if g else np.zeros(0, np.int64),
                np.concatenate(e) if e else np.zeros(0, np.int64))

    def case_query(self, protocol: str) -> np.ndarray:
        q = self.query.get(protocol, [])
        return np.concatenate(q) if q else np.zeros(0, np.int64)


def step_of(ev: EvalLog, vis: Visibility, q: Queries, idx: np.ndarray) -> Step:
    t = int(q.ts[idx[0]])
    hist = [user_history(ev, vis, int(u), t) for u in q.user[idx].tolist()]
    items = [np.unique(ev.row[h[ev.is_item[h]]]) for h in hist]
    return Step(idx, q.user[idx], t, hist, items)


def steps(q: Queries) -> list[np.ndarray]:
    """Query indices grouped by ts (queries are sorted by ts)."""
    if len(q) == 0:
        return []
    cut = np.flatnonzero(np.diff(q.ts)) + 1
    return np.split(np.arange(len(q)), cut)


def targets_of(q: Queries, i: int, protocol: str) -> np.ndarray:
    return q.new[i] if protocol == "new" else q.targets[i]


def run_replay(ev: EvalLog, vis: Visibility, q: Queries, state: StreamState,
               methods: list[Method], progress: Callable[[int, int], None] | None = None) -> Result:
    """Score every query with every method from the state as of its ts."""
    res = Result()
    for m in methods:
        res.g[m.name] = {p: [] for p in m.protocols}
        res.e[m.name] = {p: [] for p in m.protocols}
    res.query = {p: [] for p in PROTOCOLS}
    all_steps = steps(q)
    for si, idx in enumerate(all_steps):
        step = step_of(ev, vis, q, idx)
        state.advance(step.t)
        tg = {p: [targets_of(q, int(i), p) for i in idx] for p in PROTOCOLS}
        for p in PROTOCOLS:
            res.query[p].append(np.concatenate([np.full(len(t), i, np.int64)
                                                for i, t in zip(idx.tolist(), tg[p])]))
        for m in methods:
            cached: np.ndarray | None = None
            for p in m.protocols:
                if not any(len(t) for t in tg[p]):
                    continue
                if cached is None or m.per_protocol:
                    cached = quantise(m.score(state, step, p))
                for r in range(len(idx)):
                    if len(tg[p][r]) == 0:
                        continue
                    excl = None
                    if p == "new" and len(step.hist_items[r]):
                        excl = np.zeros(ev.n_items, dtype=bool)
                        excl[step.hist_items[r]] = True
                    g, e = tie_counts(cached[r], tg[p][r], excl)
                    res.g[m.name][p].append(g)
                    res.e[m.name][p].append(e)
        if progress is not None:
            progress(si + 1, len(all_steps))
    return res
