"""Parameters and partial formats of the collaborative signals, and the decay formula that
reads them (pure: stdlib + numpy).

Shared by the two sides of the signals: the state of one partition (:mod:`stream.core.signals`)
writes partials in these formats, and the merged view over every partition
(:mod:`stream.core.signal_view`) reads them.  Both import this module; neither imports the
other's internals (``signals`` re-exports the view for its callers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.core.eventtypes import DEFAULT_WEIGHTS

__all__ = ["DAY_MS", "CovisPartial", "PopPartial", "SignalParams", "decay", "read_pop"]

DAY_MS = 86_400_000.0

#: published popularity partial: (anchor_ts, short, long, count)
PopPartial = tuple[int, float, float, int]
#: published co-visitation partial: (anchor_ts, neighbours, values) (top covis_top_m, best first)
CovisPartial = tuple[int, list[str], list[float]]


@dataclass(frozen=True)
class SignalParams:
    """Half-lives (ms), window and bounds of the collaborative signals."""

    pop_short_half_life_ms: float = DAY_MS
    pop_long_half_life_ms: float = 14 * DAY_MS
    #: recent items served per user (and the pair rule's "fewer than N between")
    recent_n: int = 20
    covis_window_ms: float = DAY_MS
    covis_half_life_ms: float = 14 * DAY_MS
    #: neighbours published / served per item
    covis_top_m: int = 50
    #: neighbours kept per item per partition (a full row evicts its weakest)
    covis_capacity: int = 200
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    #: hard cap on events kept per user (tie groups can need more than recent_n); 0 = 4*recent_n
    recent_cap: int = 0
    #: weight of a pair in the backward direction (row b -> a when a came strictly before b):
    #: 1 = symmetric; < 1 favours "what comes next".  Tied pairs (equal ts) are always symmetric.
    covis_backward: float = 1.0

    def __post_init__(self) -> None:
        for name in ("pop_short_half_life_ms", "pop_long_half_life_ms", "covis_half_life_ms"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        lam = self.covis_backward
        if not isinstance(lam, (int, float)) or not math.isfinite(lam) or not 0 <= lam <= 1:
            raise ValueError(f"covis_backward must be a number in [0, 1], got {lam!r}")
        w = self.covis_window_ms
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"covis_window_ms must be a finite number >= 0, got {w!r}")
        for name in ("recent_n", "covis_top_m", "covis_capacity"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.covis_capacity < self.covis_top_m:
            raise ValueError(f"covis_capacity ({self.covis_capacity}) must be >= covis_top_m "
                             f"({self.covis_top_m})")
        if not isinstance(self.recent_cap, int) or (0 < self.recent_cap < self.recent_n) \
                or self.recent_cap < 0:
            raise ValueError(f"recent_cap must be 0 or an int >= recent_n, got {self.recent_cap!r}")
        for k, x in self.weights.items():
            if not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
                raise ValueError(f"weight for event type {k!r} must be finite and >= 0, got {x!r}")
        object.__setattr__(self, "weights", {str(k): float(v) for k, v in self.weights.items()})
        if self.recent_cap == 0:
            object.__setattr__(self, "recent_cap", 4 * self.recent_n)

    def weight_array(self, types: Sequence[str]) -> np.ndarray:
        """float64 weights for a batch of event types; unknown types weigh 0."""
        get = self.weights.get
        return np.fromiter((get(t, 0.0) for t in types), dtype=np.float64, count=len(types))


def decay(anchor: np.ndarray | float, now: float, half_life: float) -> Any:
    """2**((anchor - now)/H), capped at 1 (reading before the anchor reads it as of the anchor)."""
    return np.exp2(np.minimum(0.0, np.asarray(anchor, dtype=np.float64) - float(now)) / half_life)


def read_pop(index: Mapping[str, int], anchor: np.ndarray, short_sums: np.ndarray,
             long_sums: np.ndarray, params: SignalParams, items: Sequence[str],
             now: float) -> tuple[np.ndarray, np.ndarray]:
    """(short, long) popularity of ``items`` decayed to ``now``, 0 for items not in ``index``
    (one partition's ``ItemPopularity`` and the merged ``SignalView`` alike)."""
    rows = np.fromiter((index.get(i, -1) for i in items), dtype=np.int64, count=len(items))
    ok = rows >= 0
    short = np.zeros(len(items))
    long = np.zeros(len(items))
    r = rows[ok]
    a = anchor[r]
    short[ok] = short_sums[r] * decay(a, now, params.pop_short_half_life_ms)
    long[ok] = long_sums[r] * decay(a, now, params.pop_long_half_life_ms)
    return short, long
