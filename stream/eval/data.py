"""The evaluation's view of a log: one global event stream, a tie-aware per-user time split,
queries (a user's equal-timestamp step to predict) and the cold-start hold-outs.

Events are sorted by ``(ts, user, item id / query text, type)``: a canonical order that depends
only on what the events say, never on ``event_id`` or on catalogue rows, so no method can see the
order in which a log happened to list events that share a timestamp.  Equal timestamps are one
unordered step: everything that reads "the past" reads events with ``ts < t``.

**Split** (per user, on the user's events in time order, like ``encoder.training.logdata``): the
last ``test_frac`` of the events (at least one) are test, the ``val_frac`` before them
validation, the rest training, except that an equal-``ts`` group is never split between parts:
a boundary that falls inside a group moves to the nearest group edge (the earlier one on a tie)
that keeps the test part and the training part non-empty (validation may become empty; a user
whose events all share one ``ts`` is all training and has no case).

**Query** = one user's step at ``t`` in the validation or test part: its targets are the items
of the user's events at ``t`` (distinct items, one case each).  The history of a query is the
user's events with ``ts < t``.  A query is a *new session* when the user's previous event is more
than an hour before ``t`` (or there is none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from encoder.training.logdata import LogData
from stream.data.logs import read_events

TRAIN, VAL, TEST = 0, 1, 2
NEW_SESSION_GAP_MS = 3_600_000


@dataclass(frozen=True)
class SplitParams:
    val_frac: float = 0.1
    test_frac: float = 0.1

    def describe(self) -> dict:
        return {"scheme": "per-user time split", "val_frac": self.val_frac,
                "test_frac": self.test_frac,
                "ties": "an equal-ts group is never split: a boundary inside a group moves to "
                        "the nearest group edge (the earlier on a tie) that keeps the test and "
                        "training parts non-empty"}


def _edge(ts: np.ndarray, b: int, lo: int, hi: int) -> int | None:
    """The equal-ts group edge nearest to ``b`` within ``[lo, hi]`` (the earlier on a tie)."""
    n = len(ts)
    edges = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1], True])  # positions 0..n
    edges = edges[(edges >= lo) & (edges <= hi) & (edges <= n)]
    if len(edges) == 0:
        return None
    return int(edges[np.argmin(np.abs(edges - b))])  # argmin takes the first: the earlier


def split_user(ts: np.ndarray, p: SplitParams) -> tuple[int, int]:
    """(val_start, test_start) of one user's time-sorted timestamps, on group edges: the
    training part is ``[0, val_start)``, validation ``[val_start, test_start)``, test the rest."""
    n = len(ts)
    if n < 3:
        return n, n
    n_test = max(1, math.floor(n * p.test_frac))
    n_val = max(1, math.floor(n * p.val_frac))
    test_start = _edge(ts, n - n_test, 1, n - 1)  # test and training parts non-empty
    if test_start is None:  # one timestamp: no history before any event, so no case
        return n, n
    val_start = _edge(ts, test_start - n_val, 1, test_start)
    assert val_start is not None  # test_start itself is an edge in range
    return val_start, test_start


def read_categories(items_path: str, item_ids: list[str]) -> list[str | None]:
    """The ``category`` of each catalogue item (the last record of an item wins)."""
    cat: dict[str, str | None] = {}
    for rec in read_events(items_path):
        if isinstance(rec, dict) and rec.get("item_id") is not None:
            c = rec.get("category")
            cat[str(rec["item_id"])] = str(c) if c else None
    return [cat.get(i) for i in item_ids]


@dataclass
class EvalLog:
    """Every event of the log in canonical order (parallel arrays) and the split."""

    item_ids: list[str]
    texts: list[str]  # items, then search queries (text-table rows)
    categories: list[str | None]
    users: list[str]
    ts: np.ndarray  # int64 [n]
    user: np.ndarray  # int64 [n] index into users
    row: np.ndarray  # int64 [n] text-table row
    is_item: np.ndarray  # bool [n]
    types: list[str]
    part: np.ndarray  # int8 [n]: TRAIN, VAL, TEST
    split: SplitParams
    fingerprint: str
    # per user: the positions of its events in the global arrays (time order)
    by_user: list[np.ndarray] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_events(self) -> int:
        return len(self.ts)

    @cached_property
    def row_of(self) -> dict[str, int]:
        """Catalogue row of each item id."""
        return {i: r for r, i in enumerate(self.item_ids)}

    @cached_property
    def id_rank(self) -> np.ndarray:
        """Each catalogue row's position in item-id order."""
        r = np.empty(self.n_items, dtype=np.int64)
        r[sorted(range(self.n_items), key=self.item_ids.__getitem__)] = np.arange(self.n_items)
        return r

    @cached_property
    def category_of(self) -> dict[str, str]:
        """Category of each item id that has one."""
        return {i: c for i, c in zip(self.item_ids, self.categories) if c}


def build_log(log: LogData, categories: list[str | None], split: SplitParams) -> EvalLog:
    """Canonical global order + the tie-aware split (see the module docstring)."""
    ts_l, user_l, row_l, item_l, type_l, part_l = [], [], [], [], [], []
    users = [u.user for u in log.users]
    for ui, u in enumerate(log.users):
        n = len(u.ids)
        vs, tst = split_user(u.ts, split)
        part = np.full(n, TRAIN, dtype=np.int8)
        part[vs:tst] = VAL
        part[tst:] = TEST
        ts_l.append(u.ts)
        user_l.append(np.full(n, ui, dtype=np.int64))
        row_l.append(u.rows)
        item_l.append(u.is_item)
        type_l.extend(u.types)
        part_l.append(part)
    ts = np.concatenate(ts_l).astype(np.int64)
    user = np.concatenate(user_l)
    row = np.concatenate(row_l).astype(np.int64)
    is_item = np.concatenate(item_l).astype(bool)
    part = np.concatenate(part_l)
    # canonical order: ts, user id, item id (queries: their text), type -- never event ids or
    # catalogue rows
    text_key = [log.item_ids[r] if r < log.n_items else "\x00" + log.texts[r]
                for r in row.tolist()]
    order = sorted(range(len(ts)), key=lambda i: (int(ts[i]), users[user[i]], text_key[i],
                                                  type_l[i]))
    o = np.array(order, dtype=np.int64)
    ev = EvalLog(list(log.item_ids), list(log.texts), categories, users, ts[o], user[o], row[o],
                 is_item[o], [type_l[i] for i in order], part[o], split, log.fingerprint)
    ev.by_user = _group(ev.user, len(users))
    return ev


def _group(user: np.ndarray, n_users: int) -> list[np.ndarray]:
    order = np.argsort(user, kind="stable")
    bounds = np.searchsorted(user[order], np.arange(n_users + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(n_users)]


@dataclass
class Queries:
    """Steps to predict: user, time, and the target catalogue rows (distinct)."""

    user: np.ndarray  # int64 [q]
    ts: np.ndarray  # int64 [q]
    targets: list[np.ndarray]  # distinct item rows at (user, ts)
    new: list[np.ndarray]  # the targets the user never touched before ts (new-items protocol)
    new_session: np.ndarray  # bool [q]
    label: list[str]  # which case set the query belongs to ("val", "test", "users_1", ...)

    def __len__(self) -> int:
        return len(self.user)

    def select(self, keep: np.ndarray) -> Queries:
        idx = np.flatnonzero(keep)
        return Queries(self.user[idx], self.ts[idx], [self.targets[i] for i in idx],
                       [self.new[i] for i in idx], self.new_session[idx],
                       [self.label[i] for i in idx])


@dataclass
class Visibility:
    """Which events exist for the methods (the cold protocols hide some) and which may train
    batch models."""

    visible: np.ndarray  # bool [n]: applied to the stream state and part of histories
    trainable: np.ndarray  # bool [n]: may train batch models (training part, visible)
    tunable: np.ndarray  # bool [n]: may be a validation target

    @classmethod
    def full(cls, ev: EvalLog) -> Visibility:
        vis = np.ones(ev.n_events, dtype=bool)
        return cls(vis, ev.part == TRAIN, ev.part == VAL)


def user_history(ev: EvalLog, vis: Visibility, u: int, t: int) -> np.ndarray:
    """Global positions of user ``u``'s visible events with ts < t (time order)."""
    pos = ev.by_user[u]
    k = int(np.searchsorted(ev.ts[pos], t, "left"))
    pos = pos[:k]
    return pos[vis.visible[pos]]


def make_queries(ev: EvalLog, vis: Visibility, wanted: dict[str, np.ndarray]) -> Queries:
    """Queries for each label: ``wanted[label]`` is a bool mask over events; every (user, ts)
    step holding a wanted visible-or-not item event becomes one query of that label (the
    history excludes invisible events; the targets are the step's wanted item events)."""
    users, tss, tg, new, ns, lab = [], [], [], [], [], []
    for label, mask in wanted.items():
        m = mask & ev.is_item
        for u in np.unique(ev.user[m]).tolist():
            pos = ev.by_user[u]
            pos_m = pos[m[pos]]
            uts = ev.ts[pos]
            urows = ev.row[pos]
            u_item = ev.is_item[pos]
            u_vis = vis.visible[pos]
            for t in np.unique(ev.ts[pos_m]).tolist():
                rows = np.unique(ev.row[pos_m[ev.ts[pos_m] == t]])
                k = int(np.searchsorted(uts, t, "left"))
                # "never touched before" counts every earlier event, hidden ones included
                before = set(urows[:k][u_item[:k]].tolist())
                prev = uts[:k][u_vis[:k]]
                users.append(u)
                tss.append(t)
                tg.append(rows)
                new.append(np.array([r for r in rows.tolist() if r not in before], dtype=np.int64))
                ns.append(len(prev) == 0 or t - int(prev[-1]) > NEW_SESSION_GAP_MS)
                lab.append(label)
    order = sorted(range(len(users)), key=lambda i: (tss[i], users[i], lab[i]))
    return Queries(np.array([users[i] for i in order], dtype=np.int64),
                   np.array([tss[i] for i in order], dtype=np.int64),
                   [tg[i] for i in order], [new[i] for i in order],
                   np.array([ns[i] for i in order], dtype=bool), [lab[i] for i in order])


@dataclass
class ColdParams:
    item_frac: float = 0.1  # items held out for the item-cold test cases
    user_frac: float = 0.2  # users held out for the user-cold test cases
    val_item_frac: float = 0.1  # other items held out: item-cold validation cases
    val_user_frac: float = 0.1  # other users held out: user-cold validation cases
    ks: tuple[int, ...] = (1, 3, 5)
    seed: int = 0


def _first_groups(ev: EvalLog, visible: np.ndarray, users: np.ndarray, k: int) -> np.ndarray:
    """Event mask: each user's visible events at its (k+1)-th distinct visible timestamp."""
    m = np.zeros(ev.n_events, dtype=bool)
    for u in np.flatnonzero(users).tolist():
        pos = ev.by_user[u]
        pos = pos[visible[pos]]
        distinct = np.unique(ev.ts[pos])
        if len(distinct) > k:
            m[pos[ev.ts[pos] == distinct[k]]] = True
    return m


def cold_visibility(ev: EvalLog, p: ColdParams) -> tuple[Visibility, dict[str, np.ndarray], dict]:
    """The cold protocols in one run (the *cold run*).

    Item cold start: ``ceil(item_frac * items)`` catalogue items (seeded) are held out with all
    their events: no state, no history, no training and no validation sees them; their
    test-part events are the cases (``items``).  User cold start: ``ceil(user_frac * users)``
    users (seeded) train nothing and tune nothing; the stream sees their events as they happen,
    and the cases ``users_k`` are their item events at their (k+1)-th distinct timestamp
    (history = their first k distinct timestamps), for k in ``ks``.

    So that the run's choices (the hybrid's ranker) can learn what a cold item or a short
    history looks like from validation data only, two more disjoint sets are held out the same
    way: ``val_item_frac`` of the items (hidden everywhere; their validation-part events are
    validation cases) and ``val_user_frac`` of the users (they train nothing; their item events
    at their (k+1)-th distinct timestamps are validation cases).  Test and validation sets never
    share an item or a user.
    """
    rng = np.random.default_rng(p.seed)
    # items drawn in id order (users are already sorted): the same items whatever the
    # catalogue's row order
    by_id = np.array(sorted(range(ev.n_items), key=ev.item_ids.__getitem__), dtype=np.int64)
    n_ti = max(1, math.ceil(p.item_frac * ev.n_items))
    n_vi = math.ceil(p.val_item_frac * ev.n_items)
    perm = by_id[rng.permutation(ev.n_items)]
    test_items = np.zeros(ev.n_items, dtype=bool)
    val_items = np.zeros(ev.n_items, dtype=bool)
    test_items[perm[:n_ti]] = True
    val_items[perm[n_ti:n_ti + n_vi]] = True
    n_u = len(ev.users)
    n_tu = max(1, math.ceil(p.user_frac * n_u))
    n_vu = math.ceil(p.val_user_frac * n_u)
    uperm = rng.permutation(n_u)
    test_users = np.zeros(n_u, dtype=bool)
    val_users = np.zeros(n_u, dtype=bool)
    test_users[uperm[:n_tu]] = True
    val_users[uperm[n_tu:n_tu + n_vu]] = True

    item_row = np.where(ev.is_item, np.minimum(ev.row, ev.n_items - 1), 0)
    on_test_item = ev.is_item & test_items[item_row]
    on_val_item = ev.is_item & val_items[item_row]
    held_user = (test_users | val_users)[ev.user]
    visible = ~(on_test_item | on_val_item)
    tunable = ~held_user & (ev.part == VAL) & (visible | on_val_item)
    for k in p.ks:
        tunable |= _first_groups(ev, visible, val_users, k)
    vis = Visibility(visible, visible & ~held_user & (ev.part == TRAIN), tunable)
    wanted: dict[str, np.ndarray] = {"items": on_test_item & ~held_user & (ev.part == TEST)}
    for k in p.ks:
        wanted[f"users_{k}"] = _first_groups(ev, visible, test_users, k)
    info = {"items_held_out": int(n_ti), "items": int(ev.n_items),
            "users_held_out": int(n_tu), "users": n_u,
            "validation_items_held_out": int(n_vi), "validation_users_held_out": int(n_vu),
            "seed": p.seed, "history_lengths": list(p.ks),
            "rule": "held-out items: no state, history, training or validation sees them "
                    "(cases: their test-part events); held-out users: train and tune nothing, "
                    "the stream sees them (users_k: their items at their (k+1)-th distinct "
                    "timestamp); disjoint validation sets of items and users, held out the "
                    "same way, are the run's validation cases for cold items and short "
                    "histories"}
    return vis, wanted, info
