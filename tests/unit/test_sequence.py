"""The hybrid's sequence source (encoder.sequence + stream.core.hybrid): a SASRec over item
ids serves lifts for a user's recent events, saved and loaded without pickle; the hybrid adds
its best items as a source and its lift as a feature."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from encoder.sasrec import SasrecConfig, fit_sasrec
from encoder.sequence import SEQUENCE_ARRAYS, SEQUENCE_META, Lifts, SequenceModel
from stream.core.errors import StateError
from stream.core.hybrid import FEATURES, HybridParams, generate
from stream.core.ranker import linear_ranker
from stream.core.signals import SignalView

pytestmark = pytest.mark.unit

N = 30
IDS = [f"item{i:02d}" for i in range(N)]
T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def model() -> SequenceModel:
    """Item i is always followed by item (i + 1) % N."""
    rng = np.random.default_rng(0)
    train = [[(s + k) % N for k in range(12)] for s in rng.integers(0, N, 60).tolist()]
    cfg = SasrecConfig(max_len=8, hidden=16, blocks=1, dropout=0.0, lr=1e-2, batch=16,
                       max_epochs=15)
    return SequenceModel(fit_sasrec(train, [], N, cfg), IDS, meta={"best_epoch": 15})


def recent(*rows: int) -> list[tuple[int, str, float]]:
    return [(T0 + k, IDS[r], 1.0) for k, r in enumerate(rows)]


def test_lifts_follow_the_learnt_successor(model: SequenceModel) -> None:
    lifts = model.lifts(recent(3, 4, 5))
    assert lifts.top(1) == [("item06", pytest.approx(float(lifts.lift[6])))]
    p = np.expm1(lifts.lift) / N  # lifts are log1p(n * softmax): they sum back to 1
    assert p.sum() == pytest.approx(1.0, rel=1e-9)
    # unknown items are skipped in the history and have lift 0
    assert np.array_equal(model.lifts([*recent(3, 4, 5), (T0 + 9, "new", 1.0)]).lift, lifts.lift)
    assert lifts(["item06", "unknown"])[1] == 0.0


def test_top_excludes_and_breaks_ties_by_id(model: SequenceModel) -> None:
    flat = Lifts(model, np.zeros(N))  # every item tied
    assert [it for it, _ in flat.top(3)] == ["item00", "item01", "item02"]
    assert [it for it, _ in flat.top(2, exclude={"item00"})] == ["item01", "item02"]
    lifts = model.lifts(recent(3, 4, 5))
    assert "item06" not in [it for it, _ in lifts.top(5, exclude={"item06"})]
    assert len(lifts.top(N + 5)) == N and lifts.top(0) == []


def test_history_is_read_in_canonical_order(model: SequenceModel) -> None:
    # equal ts: the order given must not matter (the log's order inside a tie is arbitrary)
    a = [(T0, "item03", 1.0), (T0, "item09", 1.0), (T0 + 1, "item04", 1.0)]
    b = [a[1], a[0], a[2]]
    assert np.array_equal(model.lifts(a).lift, model.lifts(b).lift)


def test_save_load_round_trip_without_pickle(model: SequenceModel, tmp_path) -> None:
    info = model.save_into(tmp_path)
    assert info["item_ids"] == IDS and info["best_epoch"] == 15
    with np.load(tmp_path / SEQUENCE_ARRAYS, allow_pickle=False) as z:
        assert z.files  # plain arrays
    back = SequenceModel.load(tmp_path)
    h = recent(7, 8)
    assert np.allclose(back.lifts(h).lift, model.lifts(h).lift, rtol=0, atol=1e-9)
    assert back.describe()["items"] == N


def test_load_refuses_bad_folders(model: SequenceModel, tmp_path) -> None:
    with pytest.raises(StateError, match="no sequence.json"):
        SequenceModel.load(tmp_path)
    model.save_into(tmp_path)
    meta = json.loads((tmp_path / SEQUENCE_META).read_text())
    (tmp_path / SEQUENCE_META).write_text(json.dumps({**meta, "format": "other/9"}))
    with pytest.raises(StateError, match="unsupported format"):
        SequenceModel.load(tmp_path)
    (tmp_path / SEQUENCE_META).write_text(json.dumps(meta))
    with (tmp_path / SEQUENCE_ARRAYS).open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(StateError, match="sha256"):
        SequenceModel.load(tmp_path)


def test_hybrid_sequence_source_and_feature(model: SequenceModel) -> None:
    view = SignalView()
    lifts = model.lifts(recent(3, 4, 5))
    hits = lifts.top(3, exclude={"item05"})
    c = generate(recent(3, 4, 5), [], view, T0 + 10, HybridParams(sequence_k=3),
                 exclude={"item05"}, sequence=hits, sequence_lift=lifts)
    assert c.items == [it for it, _ in hits]
    assert c.by_source()["sequence"] == 3
    k = FEATURES.index("seq_lift")
    assert c.features[:, k].tolist() == [v for _, v in hits]
    # without the source, the lift is still a feature of the other candidates
    c2 = generate(recent(3, 4, 5), [("item06", 0.5), ("item20", 0.4)], view, T0 + 10,
                  HybridParams(sources=("content",)), sequence=hits, sequence_lift=lifts)
    assert c2.items == ["item06", "item20"] and c2.by_source()["sequence"] == 0
    assert c2.features[:, k].tolist() == pytest.approx(lifts(["item06", "item20"]).tolist())
    # a ranker on seq_lift orders the candidates by the model
    r = linear_ranker({"seq_lift": 1.0})
    order = np.argsort(-r.score(c.features))
    assert [c.items[i] for i in order] == [it for it, _ in hits]
    assert all(math.isfinite(v) for v in c.features[:, k])
