"""When each Fetch response reached aiokafka: the end of the ``broker`` latency stage
(``stream.worker.latency``).

aiokafka keeps the fetched partitions in ``Fetcher._records`` (partition -> the result of its
last Fetch, drained by the consumer's polls) and fetches a partition again only once its result
was drained, so each stored result is one run of offsets from its first.  :func:`stamp_fetches`
makes every ``Fetcher`` built afterwards in this process (faust's consumer builds one, in its
consumer thread, when it starts) keep that buffer in a :class:`StampedRecords`, which reports
each stored result, (partition, first offset), to the callback of its topic: one call per
partition and response, never one per record.  Neither aiokafka nor faust has a public hook
there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["StampedRecords", "stamp_fetches"]

#: topic -> what to call, (partition, first offset), when a Fetch response of it reaches an
#: aiokafka fetcher of this process; one worker app per process
_ON_FETCH: dict[str, Callable[[int, int], None]] = {}


class StampedRecords(OrderedDict[Any, Any]):
    """aiokafka's buffer of fetched partitions, reporting each stored Fetch result with its
    first offset to the callback of its topic (``_ON_FETCH``); a fetch error stored in its
    place is not reported."""

    def __setitem__(self, tp: Any, result: Any) -> None:
        super().__setitem__(tp, result)
        topic = getattr(tp, "topic", None)
        notify = _ON_FETCH.get(topic) if isinstance(topic, str) else None
        records = getattr(result, "_partition_records", None)  # a FetchResult, not an error
        first = getattr(records, "next_fetch_offset", None)
        if notify is not None and isinstance(first, int):
            notify(tp.partition, first)


def stamp_fetches(topic: str, on_fetch: Callable[[int, int], None],
                  fetcher_cls: Any = None) -> None:
    """Call ``on_fetch(partition, first offset)`` (from the fetcher's thread) for every Fetch
    response of ``topic`` stored by an aiokafka ``Fetcher`` built from now on in this process.

    The buffer is replaced in the ``Fetcher`` constructor, before its fetch task first runs, so
    nothing can have been stored in the old one; a ``Fetcher`` without that buffer (another
    aiokafka version) is left alone, and the fetch times are then faust's polls."""
    _ON_FETCH[topic] = on_fetch
    if fetcher_cls is None:
        from aiokafka.consumer.fetcher import Fetcher

        fetcher_cls = Fetcher
    if getattr(fetcher_cls, "_profiles_stamped", False):
        return
    original = fetcher_cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        buffered = getattr(self, "_records", None)
        if isinstance(buffered, OrderedDict) and not buffered:
            self._records = StampedRecords()

    fetcher_cls.__init__ = init
    fetcher_cls._profiles_stamped = True
