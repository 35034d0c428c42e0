"""Behaviour logs for fine-tuning and evaluation: items + events, a text table, a time split.

Events and items are our JSONL (or CSV) schemas (README, "Event schema").  Every event refers
to a row of one *text table*: catalogue items first (rows ``0 .. n_items-1``, so item rows are
also catalogue indices), then the distinct search queries.  Only item events are targets.

Split, per user, on events sorted by ``(ts, event_id)``: the last ``test_frac`` (at least one)
are test, the ``val_frac`` before them validation, the rest training.  Fine-tuning and early
stopping read only train + validation; ``LogData.split`` returns event ids so tests can assert
that no test id reaches training.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream.core.errors import DataError
from stream.core.events import Item
from stream.core.files import sha256_file


@dataclass
class UserLog:
    """One user's events in time order (parallel arrays)."""

    user: str
    ids: list[str]
    ts: np.ndarray  # int64 ms
    types: list[str]
    rows: np.ndarray  # int64 row of the text table
    is_item: np.ndarray  # bool: an item event (a possible target)


@dataclass
class Split:
    """Per user, indices into the user's events: [0, val_start) train, [val_start, test_start)
    validation, [test_start, n) test."""

    val_start: dict[str, int] = field(default_factory=dict)
    test_start: dict[str, int] = field(default_factory=dict)
    val_frac: float = 0.1
    test_frac: float = 0.1

    def params(self) -> dict:
        return {"scheme": "per-user time split", "val_frac": self.val_frac,
                "test_frac": self.test_frac, "order": "ts, event_id"}


@dataclass
class LogData:
    item_ids: list[str]
    texts: list[str]  # item texts, then query texts
    users: list[UserLog]
    fingerprint: str  # sha256 of the two input files

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def split(self, val_frac: float = 0.1, test_frac: float = 0.1) -> Split:
        if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
            raise ValueError(f"need 0 < val_frac, test_frac and their sum < 1; got {val_frac}, {test_frac}")
        sp = Split(val_frac=val_frac, test_frac=test_frac)
        for u in self.users:
            n = len(u.ids)
            n_test = max(1, math.floor(n * test_frac)) if n >= 3 else 0
            n_val = max(1, math.floor(n * val_frac)) if n >= 3 else 0
            sp.test_start[u.user] = n - n_test
            sp.val_start[u.user] = n - n_test - n_val
        return sp

    def ids_of(self, sp: Split, part: str) -> set[str]:
        """Event ids of ``part`` (train, val or test)."""
        out: set[str] = set()
        for u in self.users:
            a, b = {"train": (0, sp.val_start[u.user]),
                    "val": (sp.val_start[u.user], sp.test_start[u.user]),
                    "test": (sp.test_start[u.user], len(u.ids))}[part]
            out.update(u.ids[a:b])
        return out


def load_log(events_path: Path | str, items_path: Path | str) -> LogData:
    """Read items and events; events of unknown items and bad records are skipped."""
    from stream.data.logs import read_events

    events_path, items_path = Path(events_path), Path(items_path)
    for p in (events_path, items_path):
        if not p.is_file():
            raise DataError(f"no such file: {p}")
    item_ids: list[str] = []
    texts: list[str] = []
    row_of: dict[str, int] = {}
    for rec in read_events(items_path):
        if not isinstance(rec, dict) or rec.get("item_id") is None or not rec.get("title"):
            continue
        iid = str(rec["item_id"])
        item = Item(item_id=iid, title=str(rec["title"]), category=rec.get("category") or None,
                    brand=rec.get("brand") or None)
        if iid in row_of:
            texts[row_of[iid]] = item.text()  # a later record updates the item
            continue
        row_of[iid] = len(item_ids)
        item_ids.append(iid)
        texts.append(item.text())
    if not item_ids:
        raise DataError(f"{items_path}: no items")
    query_row: dict[str, int] = {}
    per_user: dict[str, list[tuple[int, str, str, int, bool]]] = {}
    for rec in read_events(events_path):
        if not isinstance(rec, dict):
            continue
        try:
            user, kind, ts = str(rec["user_id"]), str(rec["type"]), int(rec["ts"])
            eid = str(rec["event_id"])
        except (KeyError, TypeError, ValueError):
            continue
        if kind == "search":
            q = rec.get("query")
            if not isinstance(q, str) or not q:
                continue
            row = query_row.get(q)
            if row is None:
                row = query_row[q] = len(item_ids) + len(query_row)
            per_user.setdefault(user, []).append((ts, eid, kind, row, False))
        else:
            row = row_of.get(str(rec.get("item_id")))
            if row is None:
                continue
            per_user.setdefault(user, []).append((ts, eid, kind, row, True))
    if not per_user:
        raise DataError(f"{events_path}: no usable events")
    texts.extend(sorted(query_row, key=query_row.__getitem__))
    users = []
    for user in sorted(per_user):
        ev = sorted(per_user[user], key=lambda e: (e[0], e[1]))
        users.append(UserLog(user, [e[1] for e in ev], np.array([e[0] for e in ev], dtype=np.int64),
                             [e[2] for e in ev], np.array([e[3] for e in ev], dtype=np.int64),
                             np.array([e[4] for e in ev], dtype=bool)))
    fp = hashlib.sha256(f"{sha256_file(events_path)}|{sha256_file(items_path)}".encode()).hexdigest()
    return LogData(item_ids, texts, users, fp)
