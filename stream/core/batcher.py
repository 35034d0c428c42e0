"""A pure micro-batcher: emit when a batch is full or its oldest item has waited long enough.

No asyncio and no clock: callers pass ``now`` (monotonic seconds, nondecreasing),
which keeps the logic deterministic and testable. A typical driver loop::

    for batch in b.add(item, time.monotonic()): send(batch)
    ...sleep up to b.due(now)...
    if (batch := b.poll(time.monotonic())) is not None: send(batch)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["MicroBatcher", "length_sorted"]

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T]):
    """Groups items into batches of at most ``max_size``, waiting at most ``max_wait`` seconds."""

    __slots__ = ("_deadline", "_pending", "max_size", "max_wait")

    def __init__(self, max_size: int, max_wait: float) -> None:
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
            raise ValueError(f"max_size must be an integer >= 1, got {max_size!r}")
        if not max_wait >= 0:  # written this way so NaN is refused too
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        self.max_size = max_size
        self.max_wait = float(max_wait)
        self._pending: list[T] = []
        # Deadline of the oldest pending item; stored (not its arrival time) so that
        # due() and poll() use the same arithmetic and agree exactly.
        self._deadline: float | None = None

    def add(self, item: T, now: float) -> list[list[T]]:
        """Queue ``item``; return the batches that became full (each exactly ``max_size``)."""
        if not self._pending:
            self._deadline = now + self.max_wait
        self._pending.append(item)
        if len(self._pending) >= self.max_size:
            # A list of batches keeps the signature stable should add() ever take many items.
            return [self._take()]
        return []

    def due(self, now: float) -> float | None:
        """Seconds until the oldest pending item is due (0 if overdue); ``None`` when empty."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - now)

    def poll(self, now: float) -> list[T] | None:
        """Return the pending batch if its oldest item has waited ``max_wait``, else ``None``."""
        if self._deadline is None or now < self._deadline:
            return None
        return self._take()

    def flush(self) -> list[T] | None:
        """Return whatever is pending regardless of time (``None`` when empty)."""
        return self._take() if self._pending else None

    def __len__(self) -> int:
        return len(self._pending)

    def _take(self) -> list[T]:
        batch, self._pending, self._deadline = self._pending, [], None
        return batch


def length_sorted(
    items: Sequence[T], key: Callable[[T], int]
) -> tuple[list[int], Callable[[list[R]], list[R]]]:
    """Sort indices by ``key`` (stable) and give back a function undoing the permutation.

    Grouping similar lengths lets the encoder pad less. Usage::

        order, restore = length_sorted(texts, len)
        out = restore(encode([texts[i] for i in order]))  # out[i] belongs to texts[i]
    """
    order = sorted(range(len(items)), key=lambda i: key(items[i]))

    def restore(results: list[R]) -> list[R]:
        if len(results) != len(order):
            raise ValueError(f"expected {len(order)} results, got {len(results)}")
        out = list(results)  # right length and type; every slot is overwritten below
        for pos, i in enumerate(order):
            out[i] = results[pos]
        return out

    return order, restore
