"""The event types, in ONE table: adding a type is one line here plus its tests.

Everything else derives from this table: the schema's accepted ``type`` values and the fields
each needs (``stream.core.events``), the default profile weights (``PROFILES_EVENT_WEIGHTS``)
and bandit rewards (``PROFILES_REWARD_WEIGHTS``), which types count as bandit impressions,
which mark their item as bought (excluded from the user's candidates), which take their vector
from the query text, and which erase the user.

Pure module: stdlib only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CONVERSION_TYPES",
    "DEFAULT_REWARD_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "ERASING_TYPES",
    "EVENT_TYPES",
    "IMPRESSION_TYPES",
    "ITEMLESS_TYPES",
    "QUERY_TYPES",
    "TABLE",
    "EventType",
    "format_weights",
]


@dataclass(frozen=True, slots=True)
class EventType:
    """One kind of shopper event and what it means to each part of the service."""

    name: str
    #: default profile weight (0: the event adds nothing to the profile vector)
    weight: float = 0.0
    #: default bandit reward; None: not listed in the default reward weights
    reward: float | None = None
    #: ``item_id`` is required
    item: bool = True
    #: a non-empty ``query`` is required, and the event's vector is the query's embedding
    query: bool = False
    #: counts as one bandit impression of its arm
    impression: bool = False
    #: the user bought the item: it is excluded from their candidates
    conversion: bool = False
    #: erases the user (right to erasure): profile, stats, dead letters; a tombstone remains
    erases: bool = False


TABLE: tuple[EventType, ...] = (
    EventType("view", weight=1.0, impression=True),
    EventType("click", weight=2.0, reward=1.0),
    EventType("add_to_cart", weight=4.0, reward=0.0),
    EventType("purchase", weight=8.0, reward=0.0, conversion=True),
    EventType("search", weight=1.5, item=False, query=True),
    EventType("forget", item=False, erases=True),
)

EVENT_TYPES: tuple[str, ...] = tuple(t.name for t in TABLE)
DEFAULT_WEIGHTS: dict[str, float] = {t.name: t.weight for t in TABLE if t.weight}
DEFAULT_REWARD_WEIGHTS: dict[str, float] = {t.name: t.reward for t in TABLE
                                            if t.reward is not None}
IMPRESSION_TYPES: tuple[str, ...] = tuple(t.name for t in TABLE if t.impression)
CONVERSION_TYPES: frozenset[str] = frozenset(t.name for t in TABLE if t.conversion)
QUERY_TYPES: frozenset[str] = frozenset(t.name for t in TABLE if t.query)
ERASING_TYPES: frozenset[str] = frozenset(t.name for t in TABLE if t.erases)
ITEMLESS_TYPES: frozenset[str] = frozenset(t.name for t in TABLE if not t.item)


def format_weights(weights: Mapping[str, float]) -> str:
    """``{"view": 1.0, "search": 1.5}`` -> ``"view=1,search=1.5"`` (the settings' syntax)."""
    return ",".join(f"{k}={v:g}" for k, v in weights.items())
