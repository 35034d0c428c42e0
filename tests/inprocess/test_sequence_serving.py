"""The sequence source in the worker (stream.worker.testing, no broker): a ranker directory
that holds a SASRec (``sequence.json``) makes /candidates serve its items, and what is served
equals the offline generate + ranker with the same model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from encoder.fake import HashingEncoder
from encoder.sasrec import SasrecConfig, fit_sasrec
from encoder.sequence import SequenceModel
from stream.core.hybrid import FEATURES
from stream.core.ranker import linear_ranker
from stream.data.generate import generate
from stream.settings import Settings
from stream.worker.testing import InProcessWorker, Source

pytestmark = pytest.mark.inprocess

DIM = 16


def test_worker_serves_the_sequence_source_as_evaluated(tmp_path: Path) -> None:
    from stream.serve.queries import Queries
    from stream.service import load_sequence
    from tests.offline_candidates import Offline

    ds = generate(users=30, items=25, events=900, seed=4)
    ids = [str(it["item_id"]) for it in ds.items]
    row = {it: r for r, it in enumerate(ids)}
    by_user: dict[str, list[tuple[int, int]]] = {}
    for e in ds.events:
        if e.get("item_id") in row:
            by_user.setdefault(str(e["user_id"]), []).append((int(e["ts"]), row[e["item_id"]]))
    seqs = [[r for _, r in sorted(v)] for v in by_user.values()]
    cfg = SasrecConfig(max_len=8, hidden=16, blocks=1, dropout=0.0, lr=1e-2, batch=16,
                       max_epochs=3)
    model = SequenceModel(fit_sasrec(seqs, [], len(ids), cfg), ids)
    folder = tmp_path / "ranker"
    # a ranker that trusts the sequence model most: its items must be served
    weights = {f: 0.0 for f in FEATURES}
    weights.update(seq_lift=2.0, covis_score=0.5, content_sim=0.5)
    linear_ranker(weights).save(folder, attach=model.save_into, trained_on="test",
                                hybrid={"sequence_k": 10})
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"), ranker_dir=str(folder),
                          explore_weight=0.0)
    sequence = load_sequence(s)
    assert sequence is not None and sequence.item_ids == ids
    assert load_sequence(s.replace(ranker_dir="")) is None
    enc = HashingEncoder(DIM)

    async def main() -> None:
        async with InProcessWorker(s, enc) as w:
            await w.items(ds.items)
            records = Source(s.partitions).records(ds.events)
            for i in range(0, len(records), 101):
                await w.pipeline.process(records[i:i + 101])
            q = Queries(w.pipeline, sequence=sequence)
            offline = Offline(ds.events, ds.items, s, enc, q.ranker, sequence=sequence)
            served_sources: set[str] = set()
            for user in sorted(by_user)[::4] + ["never-seen"]:
                got = await q.candidates(user, 10)
                want = offline.candidates(user, 10)
                assert [c["item_id"] for c in got["candidates"]] == [i for i, _ in want], user
                np.testing.assert_allclose([c["score"] for c in got["candidates"]],
                                           [v for _, v in want], rtol=1e-9, atol=0)
                served_sources.update(x for c in got["candidates"] for x in c["sources"])
            assert "sequence" in served_sources
            assert q.stats()["sequence"]["items"] == len(ids)
            n = w.pipeline.metrics.registry.get_sample_value(
                "profiles_candidates_total", {"source": "sequence"})
            assert n is not None and n > 0

    asyncio.run(main())
