"""Issue 10: the in-process fault fuzzer (stream.worker.testing, no broker).

Hypothesis draws a run: batches of events over a few users, event ids, items and partitions
(the same event id for two users, re-sent events, forgets, search queries, items unknown until
they arrive or never, times far in the past, a little and too far in the future), item
arrivals, park timeouts, snapshots and crashes; with faults at random points:

- a flaky encoder (``TransientError``: retried, never dead-lettered),
- an exception in the read-only phase (retried, then applied),
- a dead-letter sink refusing its next writes (the batch stalls, then goes on; never skips),
- an exception while applying (the pipeline is broken: dropped and restarted from its last
  snapshot),
- a crash between batches (dropped, restarted from its last snapshot).

A restart is what the worker does: a new pipeline on the same state folder loads the last
snapshot (every partition and the catalogue, written together), and what came after it is
delivered again, in the same order (events from the snapshot's offsets, items from the
catalogue's).

After every run the worker must equal a plain-Python model of the documented rules walked in
log order (:func:`model`): every record has exactly one final outcome (``applied``,
``duplicate``, ``forgotten``, ``rejected``: the per-type outcome counters equal the model's and
add up to the records sent), no offset is skipped, the dead letters (by key) and erasure
tombstones are the model's, and profiles (:func:`tests.oracle.oracle_profiles`), bandit counts
(:func:`tests.oracle.oracle_bandit`) and popularity (the signals oracle) equal the oracles over
the events the model applied.

Budget: ``PROFILES_FUZZ_EXAMPLES`` examples (default 120, derandomised: the same runs in CI
every time, well under 60 s); e.g. ``PROFILES_FUZZ_EXAMPLES=2000`` for a long run on demand
(``PROFILES_FUZZ_SEED`` picks another derandomised sequence).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from encoder.fake import HashingEncoder
from stream.core.errors import StateError
from stream.core.events import Item
from stream.settings import Settings
from stream.worker.ports import Header, TransientError
from stream.worker.records import Record
from stream.worker.testing import DeadLetters, InProcessWorker, ManualClock, SignalsTopic, Source
from tests.inprocess.test_signals_pipeline import SIGNALS
from tests.inprocess.test_signals_pipeline import oracle as signals_oracle
from tests.oracle import oracle_bandit, oracle_profiles

pytestmark = pytest.mark.inprocess

EXAMPLES = int(os.environ.get("PROFILES_FUZZ_EXAMPLES", "120"))
SEED = os.environ.get("PROFILES_FUZZ_SEED")

DIM = 16
PARTITIONS = 2
USERS = ["ann", "bob", "cat", "dan"]
EVENT_IDS = ["e0", "e1", "e2", "e3"]  # shared by every user: the same id for two users
KNOWN = [{"item_id": "i0", "title": "red shoe", "category": "shoes"},
         {"item_id": "i1", "title": "blue shoe", "category": "shoes"},
         {"item_id": "i2", "title": "warm tent", "category": "tents"}]
LATE = {"late0": {"item_id": "late0", "title": "late stove", "category": "stoves"},
        "late1": {"item_id": "late1", "title": "late lamp", "category": "lamps"}}
ITEM_IDS = [*(i["item_id"] for i in KNOWN), *LATE]
QUERIES = ["red shoe", "warm tent"]
# "big": a view padded over max_message_bytes (rejected oversized; its dead letter is over the
# producer's limit too: stored truncated)
TYPES = ["view", "view", "click", "purchase", "search", "forget", "big"]
MAX_MESSAGE_BYTES = 4096
PRODUCER_LIMIT = 3000
DAY = 86_400_000
MAX_FUTURE_MS = DAY
# event time relative to the clock: far past, past, now, a little ahead, too far ahead
SHIFTS = [-400 * DAY, -3 * DAY, -3_600_000, -60_000, 0, 1_000, 1_800_000, 2 * DAY]
PARK_TIMEOUT_S = 60.0


def make_settings(state_dir: str, secret: str = "") -> Settings:
    env = {"PROFILES_ID_SECRET": secret} if secret else {}
    return Settings.from_env(env, state_dir=state_dir, partitions=PARTITIONS,
                             max_future_ms=MAX_FUTURE_MS, park_timeout_s=PARK_TIMEOUT_S,
                             retry_backoff_s=0.0005, retry_max_backoff_s=0.001,
                             encoder_cache_bytes=0, rate_limit_events=0,
                             max_message_bytes=MAX_MESSAGE_BYTES,
                             max_request_bytes=PRODUCER_LIMIT, **SIGNALS)


# ---------------------------------------------------------------------------- faults
class FlakyEncoder(HashingEncoder):
    """Raises (a transient error: CUDA out of memory) on its next ``fail`` calls."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.fail = 0

    def encode(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("encoder: CUDA out of memory (transient)")
        return super().encode(texts, **kw)


class TooLarge(Exception):
    """What the producer raises for a record over its ``max_request_size``."""


@dataclass
class FlakyDLQ(DeadLetters):
    """The in-memory DLQ refusing its next ``fail_next`` writes (a broker outage), and, like
    the real producer, every record over ``PRODUCER_LIMIT`` bytes."""

    fail_next: int = 0
    refused: int = field(default=0)

    async def __call__(self, key: bytes | None, value: bytes | None,
                       headers: list[Header]) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            self.refused += 1
            raise ConnectionError("DLQ: broker unavailable")
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > PRODUCER_LIMIT:
            raise TooLarge(f"the message is {size} bytes, over max_request_size")
        await super().__call__(key, value, headers)


def once(fn: Callable[..., Any], exc: BaseException) -> Callable[..., Any]:
    """``fn`` raising ``exc`` on its first call."""
    state = {"raised": False}

    def wrapper(*a: Any, **kw: Any) -> Any:
        if not state["raised"]:
            state["raised"] = True
            raise exc
        return fn(*a, **kw)
    return wrapper


# ---------------------------------------------------------------------------- the runs
event_spec = st.tuples(st.integers(0, len(USERS) - 1), st.integers(0, len(EVENT_IDS) - 1),
                       st.sampled_from(TYPES), st.integers(0, len(ITEM_IDS) - 1),
                       st.integers(0, len(QUERIES) - 1), st.integers(0, len(SHIFTS) - 1),
                       st.one_of(st.none(), st.none(), st.integers(0, 10_000)))
few = st.sampled_from([0, 0, 0, 1, 2, 4])
faults = st.fixed_dictionaries({"encoder": few, "dlq": few,
                                "read": st.sampled_from([False, False, False, True]),
                                "apply": st.sampled_from([False, False, False, False, True])})
op = st.one_of(
    st.tuples(st.just("batch"), st.lists(event_spec, min_size=1, max_size=8), faults),
    st.tuples(st.just("batch"), st.lists(event_spec, min_size=1, max_size=8), faults),
    st.tuples(st.just("batch"), st.lists(event_spec, min_size=1, max_size=8), faults),
    st.tuples(st.just("items"), st.sampled_from(sorted(LATE)), few),
    st.tuples(st.just("expire"), few),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("crash")),
)


def make_event(spec: tuple, now_ms: int, history: list[dict]) -> dict:
    u, e, etype, item, query, shift, resend = spec
    if resend is not None and history:
        return dict(history[resend % len(history)])  # re-sent: the same event again
    ev: dict[str, Any] = {"event_id": EVENT_IDS[e], "user_id": USERS[u], "type": etype,
                          "ts": now_ms + SHIFTS[shift]}
    if etype == "big":
        ev.update(type="view", item_id=ITEM_IDS[item], pad="x" * MAX_MESSAGE_BYTES)
    elif etype == "search":
        ev["query"] = QUERIES[query]
    elif etype != "forget":
        ev["item_id"] = ITEM_IDS[item]
    return ev


class Run:
    """One fuzzed run: the worker (replaced on a crash), what was delivered, the faults."""

    def __init__(self, state_dir: str, secret: str = "") -> None:
        self.s = make_settings(state_dir, secret)
        self.clock = ManualClock()
        self.source = Source(PARTITIONS, self.clock)
        self.dlq = FlakyDLQ()
        self.signals = SignalsTopic()
        self.enc = FlakyEncoder(DIM)
        # what was delivered, in order: ("items", [item]), ("batch", records), ("expire",)
        self.done: list[tuple] = []
        self.snap_at = 0  # how many of ``done`` the last snapshot covers
        self.history: list[dict] = []
        self.gaps = 0.0
        self.restarts = 0
        self.w: InProcessWorker | None = None

    async def start(self) -> None:
        self.w = InProcessWorker(self.s, self.enc, clock=self.clock, dead_letters=self.dlq,
                                 source=self.source, signals=self.signals)
        await self.w.__aenter__()
        self.w.pipeline.catalog.caught_up.set()  # the catalogue snapshot, then the feed

    async def crash(self) -> None:
        """Drop the worker (no snapshot), start a new one on the same state folder; what came
        after the last snapshot is delivered again."""
        assert self.w is not None
        self.gaps += gaps(self.w)
        await self.w.__aexit__(None, None, None)
        self.restarts += 1
        await self.start()
        for entry in self.done[self.snap_at:]:
            await self.deliver(entry)

    async def deliver(self, entry: tuple) -> None:
        assert self.w is not None
        if entry[0] == "items":
            await self.w.items(entry[1])
            await self.resolve()
        elif entry[0] == "batch":
            await self.w.pipeline.process(entry[1])
        else:
            await self.expire()

    async def resolve(self) -> None:
        """Resolve parked events as housekeeping does: again while the DLQ refuses."""
        assert self.w is not None
        for _ in range(50):
            try:
                await self.w.pipeline.resolve_parked()
                return
            except TransientError:
                continue
        raise AssertionError("resolving parked events never succeeded")

    async def expire(self) -> None:
        """The park timeout passes: every event still waiting for its item is dead-lettered."""
        await self.resolve()
        self.clock.advance(PARK_TIMEOUT_S + 1)
        await self.resolve()

    async def step(self, o: tuple) -> None:
        assert self.w is not None
        kind = o[0]
        if kind == "batch":
            now_ms = int(self.clock.wall() * 1000)
            events = [make_event(spec, now_ms, self.history) for spec in o[1]]
            self.history += events
            records = self.source.records(events)
            self.done.append(("batch", records))
            f = o[2]
            p = self.w.pipeline
            self.enc.fail, self.dlq.fail_next = f["encoder"], f["dlq"]
            if f["read"]:
                p.catalog.vectors = once(p.catalog.vectors,  # type: ignore[method-assign]
                                         RuntimeError("read phase: boom"))
            if f["apply"]:
                p._apply_bandit = once(p._apply_bandit,  # type: ignore[method-assign]
                                       RuntimeError("apply phase: boom"))
            try:
                await p.process(records)
            except StateError:
                assert f["apply"], "broken without an exception while applying"
                self.enc.fail = self.dlq.fail_next = 0
                await self.crash()
            finally:
                self.enc.fail = self.dlq.fail_next = 0
                p.__dict__.pop("_apply_bandit", None)
                p.catalog.__dict__.pop("vectors", None)
        elif kind == "items":
            self.done.append(("items", [LATE[o[1]]]))
            await self.w.items([LATE[o[1]]])
            self.dlq.fail_next = o[2]
            try:
                await self.resolve()
            finally:
                self.dlq.fail_next = 0
        elif kind == "expire":
            self.done.append(("expire",))
            self.dlq.fail_next = o[1]
            try:
                await self.expire()
            finally:
                self.dlq.fail_next = 0
        elif kind == "snapshot":
            await self.w.pipeline.snapshot(everything=True)
            self.snap_at = len(self.done)
        else:
            await self.crash()


def gaps(w: InProcessWorker) -> float:
    reg = w.pipeline.metrics.registry
    return sum(reg.get_sample_value("profiles_offset_gaps_total",
                                    {"topic": w.settings.events_topic, "partition": str(p)})
               or 0.0 for p in range(PARTITIONS))


# ---------------------------------------------------------------------------- the model
@dataclass
class Model:
    outcomes: Counter = field(default_factory=Counter)
    applied: list[dict] = field(default_factory=list)  # in the order applied
    profile: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    dead: dict[bytes, str] = field(default_factory=dict)  # DLQ key -> reason
    erased: set[bytes] = field(default_factory=set)  # DLQ keys a forget tombstoned


def model(done: list[tuple], pid: Callable[[str], str]) -> Model:
    """The documented rules, walked in log order (README "Exactly-once effect" and "Privacy
    and failure"; tests/inprocess/test_signals_pipeline.py ``applied_events``):

    - ``ts`` more than ``max_future_ms`` after the record's Kafka time: rejected
      ``ts_in_future`` (type ``unknown``), not remembered by the dedupe window;
    - a (user, event id) pair seen before: ``duplicate``;
    - a forget erases its user's profile and parked events (``forgotten``) and their dead
      letters (tombstones); its tombstone is the newest of its ts and the times it erased, and
      a later event of the user at or before it is ``forgotten``;
    - an event of an unknown item parks; applied when the item arrives; dead-lettered
      ``unknown_item`` at the park timeout, leaving no effect (its pair is forgotten too);
    - bandit, popularity keep erased events' contributions; the profile restarts.

    ``pid``: the id a user is stored under (its pseudonym with ``PROFILES_ID_SECRET``)."""
    m = Model()
    catalogue = {i["item_id"] for i in KNOWN}
    seen: set[tuple[str, str]] = set()
    tomb: dict[str, int] = {}
    newest: dict[str, int] = {}
    parked: list[tuple[dict, Record]] = []
    dlq_keys: dict[str, list[bytes]] = defaultdict(list)

    def apply(e: dict) -> None:
        u = e["user_id"]
        m.outcomes[(e["type"], "applied")] += 1
        m.applied.append(e)
        m.profile[u].append(e)
        newest[u] = max(e["ts"], newest.get(u, e["ts"]))

    for entry in done:
        if entry[0] == "items":
            catalogue |= {i["item_id"] for i in entry[1]}
            still = []
            for e, rec in parked:
                if e["item_id"] in catalogue:
                    apply(e)
                else:
                    still.append((e, rec))
            parked = still
        elif entry[0] == "expire":
            for e, rec in parked:
                m.outcomes[(e["type"], "rejected")] += 1
                key = f"{pid(e['user_id'])}/{rec.partition}/{rec.offset}".encode()
                m.dead[key] = "unknown_item"
                dlq_keys[e["user_id"]].append(key)
                seen.discard((e["user_id"], e["event_id"]))
            parked = []
        else:
            for rec in entry[1]:
                e = orjson.loads(rec.value)
                u = e["user_id"]
                big = len(rec.value) > MAX_MESSAGE_BYTES
                if big or e["ts"] > rec.timestamp_ms + MAX_FUTURE_MS:
                    m.outcomes[("unknown", "rejected")] += 1
                    key = f"{pid(u)}/{rec.partition}/{rec.offset}".encode()
                    m.dead[key] = "oversized" if big else "ts_in_future"
                    dlq_keys[u].append(key)
                    continue
                pair = (u, e["event_id"])
                if pair in seen:
                    m.outcomes[(e["type"], "duplicate")] += 1
                    continue
                seen.add(pair)
                if e["type"] == "forget":
                    t = max(e["ts"], newest.pop(u, e["ts"]))
                    for pe, _rec in parked:
                        if pe["user_id"] == u:
                            t = max(t, pe["ts"])
                            m.outcomes[(pe["type"], "forgotten")] += 1
                    parked = [(pe, r) for pe, r in parked if pe["user_id"] != u]
                    tomb[u] = max(t, tomb.get(u, t))
                    m.profile.pop(u, None)
                    m.erased.update(dlq_keys.pop(u, []))
                    m.outcomes[("forget", "applied")] += 1
                    m.applied.append(e)
                elif u in tomb and e["ts"] <= tomb[u]:
                    m.outcomes[(e["type"], "forgotten")] += 1
                elif e.get("item_id") is not None and e["item_id"] not in catalogue:
                    parked.append((e, rec))
                else:
                    apply(e)
    assert not parked, "every run ends with a park timeout"
    return m


# ---------------------------------------------------------------------------- the checks
def item_vectors(enc: HashingEncoder) -> dict[str, np.ndarray]:
    items = [Item(it["item_id"], title=it["title"], category=it["category"])
             for it in [*KNOWN, *LATE.values()]]
    return dict(zip([i.item_id for i in items], enc.encode([i.text() for i in items])))


def check(r: Run) -> dict[str, int]:
    w = r.w
    assert w is not None
    p = w.pipeline
    pid = p.pseudonymize if p.pseudonymize.enabled else str
    m = model(r.done, pid)
    got: Counter = Counter()
    for ps in p.profiles.partitions():
        got.update(ps.outcomes)
    got = Counter({k: v for k, v in got.items() if v})
    sent = sum(len(entry[1]) for entry in r.done if entry[0] == "batch")
    # (1) every record has exactly one final outcome, the model's
    assert p.summary().get("parked", 0) == 0
    assert got == m.outcomes, ("outcomes", sorted(got.items()), sorted(m.outcomes.items()))
    assert sum(got.values()) == sent
    # nothing skipped, nothing lost
    assert r.gaps + gaps(w) == 0
    assert {q: ps.next_offset for q, ps in p.states.items()} == r.source.next_offset
    letters = {d.key or b"": d.reason for d in r.dlq.records if d.value is not None}
    assert letters == m.dead, ("dead letters", sorted(letters.items()), sorted(m.dead.items()))
    for d in r.dlq.records:
        if d.reason == "oversized":
            assert d.headers["truncated"] == b"1", d.headers
    assert set(r.dlq.tombstones()) == m.erased, ("tombstones", r.dlq.tombstones(), m.erased)
    assert "processing_error" not in r.dlq.reasons()
    if p.pseudonymize.enabled:  # pseudonymised once, never the raw id, never twice
        pseudonyms = {pid(u) for u in USERS}
        for d in r.dlq.records:
            key, value = d.key or b"", d.value or b""
            assert not any(f'"{u}"'.encode() in value or key.startswith(u.encode())
                           for u in USERS), d
            if value and not d.headers.get("truncated"):
                assert orjson.loads(value)["user_id"] in pseudonyms, d
    # (2) the state equals the oracles over the applied events
    plain = HashingEncoder(DIM)
    qv = dict(zip(QUERIES, plain.encode(QUERIES)))
    want = {pid(u): v for u, v in oracle_profiles(
        [e for evs in m.profile.values() for e in evs], item_vectors(plain), qv,
        r.s.event_weight_map(), r.s.half_life_ms).items()}
    users = {u for ps in p.profiles.partitions() for u in ps.profiles.users()}
    assert users == set(want), ("profiles", sorted(users), sorted(want))
    for u, vec in want.items():
        got_vec = p.profiles.vector(u)
        assert got_vec is not None, u
        np.testing.assert_allclose(got_vec, vec, atol=1e-5, err_msg=u)
    arms: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for ps in p.profiles.partitions():
        for arm, (imp, rew) in ps.arms.as_dict().items():
            arms[arm][0] += imp
            arms[arm][1] += rew
    got_arms = {a: (c[0], c[1]) for a, c in arms.items() if c[0] or c[1]}
    want_arms = {a: c for a, c in oracle_bandit(m.applied, r.s.reward_weight_map()).items()
                 if c[0] or c[1]}
    assert got_arms == want_arms, ("bandit", got_arms, want_arms)
    weights = r.s.signal_params().weights
    item_events = [e for e in m.applied if e.get("item_id") and weights.get(e["type"], 0) > 0]
    if item_events:
        now = max(e["ts"] for e in item_events)
        pop = signals_oracle(m.applied, r.s, now)
        items = sorted(pop["short"])
        short, long = p.sharing.view.popularity(items, now)
        np.testing.assert_allclose(short, [pop["short"][i] for i in items], rtol=1e-6)
        np.testing.assert_allclose(long, [pop["long"][i] for i in items], rtol=1e-6)
        # co-visitation (exact: no eviction with these settings) and recent items
        for item in items:
            got_nb = dict(p.sharing.view.neighbours(item, now, 1000))
            exp = pop["covis"].get(item, {})
            assert set(got_nb) == set(exp), ("covis", item, got_nb, dict(exp))
            for nb, v in exp.items():
                assert abs(got_nb[nb] - v) <= 1e-6 * abs(v), ("covis", item, nb, got_nb[nb], v)
        recent = {u: [tuple(x) for x in ps.signals.recent.get(u)]
                  for ps in p.profiles.partitions() for u in ps.signals.recent.users()}
        want_recent = {pid(u): [tuple(x) for x in v] for u, v in pop["recent"].items()}
        assert recent == want_recent, ("recent", recent, want_recent)
    return {"records": sent, "applied": len(m.applied), "restarts": r.restarts,
            "dead": len(m.dead), "erased": len(m.erased)}


async def fuzz(ops: list[tuple], secret: str = "") -> dict[str, int]:
    with tempfile.TemporaryDirectory() as d:
        r = Run(d, secret)
        await r.start()
        try:
            await r.deliver(("items", KNOWN))
            r.done.append(("items", KNOWN))
            for o in ops:
                await r.step(o)
            r.done.append(("expire",))
            await r.expire()
            stats = check(r)
            # a clean restart changes nothing
            assert r.w is not None
            await r.w.pipeline.snapshot(everything=True)
            r.snap_at = len(r.done)
            await r.crash()
            check(r)
            return stats
        finally:
            if r.w is not None:
                await r.w.__aexit__(None, None, None)


@seed(int(SEED or 0))
@settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(op, min_size=1, max_size=14), st.sampled_from(["", "fuzz-secret"]))
def test_faults_never_lose_double_or_misattribute_an_event(ops: list[tuple], secret: str
                                                          ) -> None:
    asyncio.run(fuzz(ops, secret))
