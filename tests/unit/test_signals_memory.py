"""Co-visitation rows keep one string object per item id, not one per row entry (issue 12:
bench scale's bytes_per_user held ~650 B/user of duplicate item-id strings, one per new pair,
because every event's item id is a fresh object from the JSON decoder)."""

from __future__ import annotations

import numpy as np

from stream.core.signals import CoVisitation, SignalParams, Signals


def _fresh(k: int) -> str:
    return "".join(["item-", str(k)])  # a new string object on every call, as orjson makes


def _key_objects(cov: CoVisitation) -> tuple[int, int]:
    """(distinct string objects, distinct item ids) among the rows' items and neighbours."""
    held = [*cov._names, *cov._order]  # the only strings a compact row table holds
    return len({id(s) for s in held}), len(set(held))


def _loaded(seed: int = 0, users: int = 300, items: int = 40, batches: int = 20) -> Signals:
    rng = np.random.default_rng(seed)
    sig = Signals(SignalParams(recent_n=3))
    t = 1_700_000_000_000
    for b in range(batches):
        u = rng.integers(0, users, 200).tolist()
        it = rng.integers(0, items, 200).tolist()
        sig.apply([f"u{x}" for x in u], [_fresh(k) for k in it],
                  np.arange(200, dtype=np.int64) * 1000 + t + b * 200_000, ["view"] * 200)
    return sig


def test_covis_rows_share_one_string_per_item() -> None:
    sig = _loaded()
    objects, distinct = _key_objects(sig.covis)
    assert distinct > 20 and sig.covis.entries() > 5 * distinct
    assert objects == distinct  # before: one object per new (item, neighbour) entry
    # the recent items' interned table names the same objects
    assert {id(s) for s in sig.recent._items if s is not None} <= {
        id(s) for s in sig.popularity._names}


def test_covis_from_state_shares_one_string_per_item() -> None:
    sig = _loaded(seed=1)
    state = sig.covis.state()
    state["neighbours"] = [_fresh(int(s[5:])) for s in state["neighbours"]]  # decoder's copies
    back = CoVisitation.from_state(state, sig.params)
    objects, distinct = _key_objects(back)
    assert [back.row(i) for i in back.items()] == [sig.covis.row(i) for i in sig.covis.items()]
    assert objects == distinct


def test_decoded_batch_shares_one_string_per_user_and_item() -> None:
    """The columnar decoder hands every table the same object for an id (not one per event)."""
    import orjson

    from stream.core.events import Limits, decode_events

    raws = [orjson.dumps({"event_id": f"e{k}", "user_id": f"u{k % 3}", "type": "view",
                          "ts": 1_700_000_000_000 + k, "item_id": f"i{k % 5}"})
            for k in range(40)]
    evs = decode_events(raws, [None] * len(raws), Limits())
    assert len(evs) == 40 and all(hasattr(e, "item_id") for e in evs)
    assert len({id(e.user_id) for e in evs}) == 3  # type: ignore[union-attr]
    assert len({id(e.item_id) for e in evs}) == 5  # type: ignore[union-attr]
