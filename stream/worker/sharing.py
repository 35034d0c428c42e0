"""The merged view of the collaborative signals over every worker (``SharedSignals``).

Popularity and co-visitation are item-level facts, but the stream is partitioned by user: each
worker holds the :class:`~stream.core.signals.Signals` of the partitions it owns.  Every worker
serves from one merged :class:`~stream.core.signal_view.SignalView`, filled two ways:

- **its own partitions, at once**: after each batch the items it changed are put into the local
  view (``SignalView.put_local``: popularity partials written at once, co-visitation read from
  the live partition state when an item is next read after its put), so a single worker serves
  its own fresh state without a round trip; and they are queued for publishing;
- **everybody's partitions, through Kafka**: the queued partials are published on a timer
  (``PROFILES_SIGNALS_PUBLISH_MS``) and on revocation to a compacted topic, keyed
  ``<partition>:<item>``, which every worker follows (``stream.kafka.signals_feed``) into
  :meth:`SharedSignals.receive`.  A partial *replaces* what the view held for that (partition,
  item), so re-publishing, replays and rebalances never double-count.  Records about a
  partition this worker owns are skipped: its local state is newer than anything published.

A partition loaded from a snapshot queues *every* partial it holds: whatever the previous
owner had not yet published when it stopped (or was killed) is published again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping

import orjson

from stream.core.signal_params import CovisPartial, PopPartial, SignalParams
from stream.core.signal_view import SignalView
from stream.core.signals import Signals
from stream.worker.metrics import Metrics
from stream.worker.records import Record

__all__ = ["SharedSignals", "decode_partial", "encode_partial", "signal_key"]

log = logging.getLogger(__name__)


def signal_key(partition: int, item: str) -> bytes:
    """The topic key of a partial: ``<source partition>:<item>`` (compaction keeps the last)."""
    return f"{partition}:{item}".encode()


def encode_partial(partition: int, item: str, pop: PopPartial | None,
                   covis: CovisPartial | None) -> tuple[bytes, bytes]:
    """(key, value) of one item's partials from one partition.  orjson writes float64 in their
    shortest exact form, so a partial read back is bit-identical."""
    return signal_key(partition, item), orjson.dumps({"pop": pop, "covis": covis})


def decode_partial(key: bytes | None, value: bytes | None
                   ) -> tuple[int, str, PopPartial | None, CovisPartial | None] | None:
    """The (partition, item, pop, covis) of a record; None when it is not one of ours."""
    if key is None:
        return None
    try:
        part, sep, item = key.decode().partition(":")
        if not sep or not item:
            return None
        partition = int(part)
        if value is None:  # a tombstone: the partials are gone
            return partition, item, None, None
        d = orjson.loads(value)
        pop, covis = d.get("pop"), d.get("covis")
        return (partition, item, None if pop is None else (int(pop[0]), float(pop[1]),
                                                             float(pop[2]), int(pop[3])),
                None if covis is None else (int(covis[0]), [str(k) for k in covis[1]],
                                            [float(v) for v in covis[2]]))
    except (ValueError, TypeError, IndexError, AttributeError, orjson.JSONDecodeError):
        return None


class SharedSignals:
    """This worker's merged view, what it still has to publish, and the feed's progress."""

    def __init__(self, params: SignalParams, owned: Callable[[], Collection[int]],
                 metrics: Metrics | None = None) -> None:
        self.params = params
        self.view = SignalView(params)
        self._owned = owned
        self.metrics = metrics
        self.pending: dict[int, set[str]] = {}  # partition -> items to publish
        # partition -> items taken for a publish that the broker has not acknowledged yet
        self.sending: dict[int, set[str]] = {}
        self.caught_up = asyncio.Event()  # set by the feed at the high watermark
        self.published = 0
        self.received = 0
        self.rejected = 0
        self.newest_ts = 0  # newest event time in the view (what "now" means when serving)
        # other records on the topic, by key prefix (b"seg:": stream.worker.segments)
        self.routes: dict[bytes, Callable[[Record], None]] = {}

    # -- this worker's partitions ------------------------------------------------------
    def _put(self, partition: int, item: str, pop: PopPartial | None,
             covis: CovisPartial | None) -> None:
        self.view.put_pop(partition, item, pop)
        self.view.put_covis(partition, item, covis)
        if pop is not None and pop[0] > self.newest_ts:
            self.newest_ts = pop[0]

    def local(self, partition: int, signals: Signals, newest_ts: int,
              publish: bool = True) -> int:
        """After a batch: put what ``signals`` changed into the view and queue it for
        publishing (``publish`` False: a worker without a signals topic); ``newest_ts``: the
        batch's newest item event time.  Returns how many items."""
        pop, cov = signals.take_changed()
        items = pop | cov
        self._put_local(partition, signals, items)
        if newest_ts > self.newest_ts:
            self.newest_ts = newest_ts
        if publish and items:
            self.pending.setdefault(partition, set()).update(items)
        return len(items)

    def merge(self) -> None:
        """After the batch step's :meth:`local` calls: merge what they put (vectorised, once
        per batch), so the next request does not pay it."""
        self.view.merge()

    def loaded(self, partition: int, signals: Signals, publish: bool = True,
               unpublished: Collection[str] | None = None) -> None:
        """A partition was loaded: put every partial it holds, and queue for publishing those
        its snapshot recorded as ``unpublished`` (None: all of them).  The others are on the
        signals topic as the snapshot holds them (published before it was taken), or newer
        (published after it): the tail re-applied now changes those again, which queues them."""
        signals.take_changed()
        items = set(signals.popularity.items()) | set(signals.covis.items())
        self._put_local(partition, signals, items)
        anchors = signals.popularity.state()["anchors"]
        if len(anchors) and int(anchors.max()) > self.newest_ts:
            self.newest_ts = int(anchors.max())
        todo = items if unpublished is None else items & set(unpublished)
        if publish and todo:
            self.pending.setdefault(partition, set()).update(todo)

    def unpublished(self, partition: int) -> list[str]:
        """The items of ``partition`` whose partials the topic may not hold as the state does
        now: queued, or taken by a publish not acknowledged yet (sorted)."""
        return sorted(self.pending.get(partition, set()) | self.sending.get(partition, set()))

    def _put_local(self, partition: int, signals: Signals, items: Collection[str]) -> None:
        if not items:
            return
        self.view.put_local(partition, signals, sorted(items))

    def take_pending(self, partitions: Iterable[int] | None = None) -> list[tuple[int, str]]:
        """The pending (partition, item) of ``partitions`` (default: all), sorted; they leave
        the queue (:meth:`requeue` puts back what could not be sent)."""
        out: list[tuple[int, str]] = []
        for p in sorted(self.pending if partitions is None else partitions):
            taken = self.pending.pop(p, set())
            if taken:
                self.sending.setdefault(p, set()).update(taken)
            out.extend((p, item) for item in sorted(taken))
        return out

    def done(self, todo: Iterable[tuple[int, str]]) -> None:
        """The partials of these were acknowledged by the broker."""
        for p, item in todo:
            s = self.sending.get(p)
            if s is not None:
                s.discard(item)
                if not s:
                    del self.sending[p]

    @staticmethod
    def encode(todo: Iterable[tuple[int, str]], signals: Mapping[int, Signals]
               ) -> list[tuple[bytes, bytes]]:
        """The messages of these (partition, item) partials as the partitions' states hold them
        now; partitions no longer owned are left out (their next owner publishes them)."""
        out: list[tuple[bytes, bytes]] = []
        for p, item in todo:
            sig = signals.get(p)
            if sig is not None:
                out.append(encode_partial(p, item, sig.popularity.partial(item),
                                          sig.covis.partial(item)))
        return out

    def sent(self, messages: list[tuple[bytes, bytes]]) -> None:
        """These were acknowledged by the broker."""
        self.published += len(messages)
        if self.metrics is not None and messages:
            self.metrics.signals_published.inc(len(messages))

    def requeue(self, todo: Iterable[tuple[int, str]]) -> None:
        """Sending these failed: publish them again next time."""
        todo = list(todo)
        self.done(todo)
        for p, item in todo:
            self.pending.setdefault(p, set()).add(item)

    def drop(self, partition: int) -> None:
        """The partition left this worker: its partials stay in the view as they are now
        (frozen) until its next owner's replace them."""
        self.pending.pop(partition, None)
        self.sending.pop(partition, None)
        self.view.detach(partition)

    # -- the topic -----------------------------------------------------------------------
    def receive(self, records: list[Record]) -> int:
        """Put partials read from the signals topic; skips this worker's own partitions (its
        state is newer).  Returns how many were put."""
        owned = {str(p).encode() + b":" for p in self._owned()}
        n = 0
        for r in records:
            self.received += 1
            route = (self.routes.get(r.key[:r.key.find(b":") + 1])
                     if self.routes and r.key is not None else None)
            if route is not None:
                route(r)
                continue
            if r.key is not None and r.key[:r.key.find(b":") + 1] in owned:
                continue  # one of ours: the local state is newer (and decoding costs)
            got = decode_partial(r.key, r.value)
            if got is None:
                self.rejected += 1
                continue
            partition, item, pop, covis = got
            self._put(partition, item, pop, covis)
            n += 1
        if self.metrics is not None and records:
            self.metrics.signals_received.inc(len(records))
        return n

    def mark_caught_up(self) -> None:
        self.caught_up.set()

    def is_caught_up(self) -> bool:
        return self.caught_up.is_set()

    def pending_count(self) -> int:
        return sum(len(v) for v in self.pending.values())
