"""A reader of a topic that keeps growing is caught up at the end it saw first (stop 21).

After a restart the worker re-publishes the signal partials it loaded while its own signals
feed reads the topic back: checked against the moving high watermark, the feed chased those
writes for seconds before ``/readyz``.  A fake consumer whose topic grows by ``grow`` records
per poll while it reads ``read`` per poll shows the difference."""

from __future__ import annotations

import asyncio

from stream.kafka.highwater import caught_up


class GrowingTopic:
    """One partition; each poll reads ``read`` records and the topic grows by ``grow``."""

    def __init__(self, start_end: int, read: int, grow: int) -> None:
        self.end, self.pos, self.read, self.grow = start_end, 0, read, grow
        self.fetched = False

    def poll(self) -> None:
        self.fetched = True  # a Fetch answer carries the high watermark
        self.pos = min(self.end, self.pos + self.read)
        self.end += self.grow

    def highwater(self, tp: object) -> int | None:
        return self.end if self.fetched else None

    async def position(self, tp: object) -> int:
        return self.pos


def polls_until_caught_up(topic: GrowingTopic, targets: dict | None, limit: int = 200) -> int:
    async def run() -> int:
        for n in range(1, limit + 1):
            topic.poll()
            if await caught_up(topic, ["tp"], 0, targets=targets):
                return n
        return -1
    return asyncio.run(run())


def test_a_growing_topic_is_caught_up_at_the_end_seen_first() -> None:
    # 1,000 records at start, read 100 per poll, 100 more written per poll (our re-publish)
    assert polls_until_caught_up(GrowingTopic(1000, 100, 100), targets={}) == 11
    # the moving watermark is never reached while the topic grows as fast as it is read
    assert polls_until_caught_up(GrowingTopic(1000, 100, 100), targets=None) == -1


def test_a_partition_not_yet_answered_is_not_caught_up_and_targets_stay_first() -> None:
    async def run() -> None:
        t = GrowingTopic(50, 10, 5)
        targets: dict = {}
        assert not await caught_up(t, ["tp"], 0, targets=targets)  # no Fetch answer yet
        assert targets == {}
        t.poll()
        assert not await caught_up(t, ["tp"], 0, targets=targets)
        assert targets == {"tp": 55}  # the first watermark seen, kept
        for _ in range(5):
            t.poll()
        assert await caught_up(t, ["tp"], 0, targets=targets)
        assert targets == {"tp": 55} and t.end > 55
    asyncio.run(run())
