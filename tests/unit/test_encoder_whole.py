"""A whole batch of texts (the pipeline's queries of one micro-batch) is encoded at once,
not held ``PROFILES_ENCODER_MAX_WAIT_S`` for other callers' texts; single requests still are
coalesced for that long."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from stream.worker.encoding import EncoderService

pytestmark = pytest.mark.unit


def test_a_whole_batch_is_dispatched_now_and_single_texts_wait_to_be_coalesced() -> None:
    async def main() -> None:
        enc = HashingEncoder(16)
        svc = EncoderService(enc, max_batch=64, max_wait_s=30.0)  # a wait no test sits out
        svc.start()
        try:
            got = await asyncio.wait_for(svc.encode(["red shoes", "blue hat"], whole=True), 5)
            assert np.array_equal(got, enc.encode(["red shoes", "blue hat"]))
            waiting = asyncio.ensure_future(svc.encode(["green scarf"]))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # held for other callers' texts
            # a whole batch takes what is pending along
            await asyncio.wait_for(svc.encode(["grey coat"], whole=True), 5)
            assert np.array_equal(await asyncio.wait_for(waiting, 5),
                                  enc.encode(["green scarf"]))
        finally:
            await svc.stop()

    asyncio.run(main())

