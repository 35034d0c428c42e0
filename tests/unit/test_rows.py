"""stream.core.rows.UserRows: the row bookkeeping ProfileTable and InterestTable share."""

from __future__ import annotations

import numpy as np

from stream.core.interests import InterestParams, InterestTable
from stream.core.profile import ProfileParams, ProfileTable
from stream.core.rows import NO_ANCHOR, UserRows, grown


def test_rows_grow_by_doubling_and_reuse_the_lowest_freed_row_first() -> None:
    t = UserRows(capacity=2)
    rows = t._rows(["a", "b", "a", "c"])
    assert rows.tolist() == [0, 1, 0, 2] and len(t._anchor) == 4 and len(t._names) == 4
    assert t.users() == ["a", "b", "c"] and "b" in t and len(t) == 3
    assert t.remove("b") and t.remove("a") and not t.remove("a")
    assert t._rows(["d", "e", "f"]).tolist() == [0, 1, 3]  # freed rows 0, 1 first, then new
    assert t._anchor[:4].tolist() == [NO_ANCHOR] * 4


def test_idle_reads_anchors_and_skips_rows_without_events() -> None:
    t = UserRows(capacity=1)
    t._rows(["old", "new", "none"])
    t._anchor[:2] = [100, 200]
    assert t.idle(150) == ["old"] and t.idle(1000) == ["old", "new"]
    t.remove("old")
    assert t.idle(1000) == ["new"]


def test_grown_keeps_rows_dtype_and_fills_the_rest() -> None:
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    g = grown(a, 4, 7)
    assert g.dtype == np.float16 and g.shape == (4, 3)
    assert g[:2].tolist() == a.tolist() and (g[2:] == 7).all()


def test_both_tables_clear_their_own_arrays_when_a_row_is_freed_and_regrown() -> None:
    rng = np.random.default_rng(0)
    for t in (ProfileTable(4, ProfileParams(), capacity=1),
              InterestTable(4, InterestParams(k=2), capacity=1)):
        users = [f"u{i}" for i in range(5)]
        t.apply(users, np.full(5, 1_000), np.ones(5), rng.standard_normal((5, 4)))
        assert t.remove("u0")
        t.apply(["z"], np.array([2_000]), np.zeros(1), np.zeros((1, 4)))  # reuses row 0
        raw = t.raw("z")
        assert raw is not None and raw[0] == 2_000
        assert not np.asarray(raw[1]).any()  # no leftover of u0's sum / importances
