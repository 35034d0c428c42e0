"""One settings object, read from ``PROFILES_*`` environment variables in one place.

Every field has a default that works on the embedded broker; each maps to the environment
variable ``PROFILES_<FIELD>`` (upper case).  The CLI's ``--help`` lists them, and this module is
the only one that reads ``os.environ`` (a test checks it).  The pure core's parameter objects
(:class:`Limits`, :class:`ProfileParams`, :class:`BanditParams`) are made from settings here,
once: :meth:`Settings.limits`, :meth:`Settings.profile_params`, :meth:`Settings.bandit_params`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stream.core.bandit import BanditParams
from stream.core.errors import ConfigError
from stream.core.events import Limits
from stream.core.eventtypes import DEFAULT_REWARD_WEIGHTS, DEFAULT_WEIGHTS, format_weights
from stream.core.hybrid import HybridParams
from stream.core.interests import InterestParams
from stream.core.policies import parse_policy
from stream.core.profile import DEFAULT_TTL_RANK, ProfileParams
from stream.core.search import SearchParams
from stream.core.signals import SignalParams

ENV_PREFIX = "PROFILES_"


class Secret(str):
    """A string that never shows itself in repr/str-formatting of settings."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"

    def __str__(self) -> str:
        return "**********" if self else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def reveal(self) -> str:
        return str.__str__(self)  # the plain value (str's own __str__, not the masked one)


def _weights(text: str) -> dict[str, float]:
    """Parse ``view=1,click=2`` into a dict."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected name=value, got {part!r}")
        out[name.strip()] = float(value)
    return out


@dataclass(frozen=True)
class Settings:
    """Service configuration (see README, "Configuration")."""

    bootstrap_servers: str = field(default="127.0.0.1:9092", metadata={"help": "Kafka bootstrap servers"})
    events_topic: str = field(default="events", metadata={"help": "topic of shopper events"})
    items_topic: str = field(default="items", metadata={"help": "topic of the item catalogue"})
    dlq_topic: str = field(default="events.dlq", metadata={"help": "dead-letter topic"})
    partitions: int = field(default=4, metadata={"help": "partitions of the events topic when created"})
    group_id: str = field(default="profiles", metadata={"help": "consumer group / faust app id"})
    state_dir: str = field(default="./state", metadata={"help": "where partition snapshots live"})
    changelog: bool = field(default=True, metadata={
        "help": "write partition state to a compacted Kafka changelog topic too, so any worker "
                "restores a partition it gains from Kafka (the state folder is then a cache)"})
    changelog_topic: str = field(default="", metadata={
        "help": "the changelog topic ('' = <events topic>-changelog; compacted, one partition "
                "per events partition)"})
    snapshot_interval_s: float = field(default=2.0, metadata={
        "help": "a changed partition is snapshotted once its last snapshot is this old"})
    snapshot_budget: float = field(default=0.05, metadata={
        "help": "most share of the event loop's time spent serialising snapshots (stretches the interval)"})
    snapshot_max_deltas: int = field(default=16, metadata={
        "help": "incremental snapshots (deltas) on a partition's base before the next full one; "
                "one comes sooner once the deltas outgrow the base (0 = every snapshot full)"})
    half_life_ms: float = field(default=7 * 24 * 3600 * 1000.0, metadata={"help": "profile half-life in event time (ms)"})
    event_weights: str = field(
        default=format_weights(DEFAULT_WEIGHTS),  # the event-type table's weights
        metadata={"help": "profile weight per event type"},
    )
    reward_weights: str = field(
        default=format_weights(DEFAULT_REWARD_WEIGHTS),  # the event-type table's rewards
        metadata={"help": "bandit reward per event type"},
    )
    prior_alpha: float = field(default=1.0, metadata={"help": "Beta prior alpha of a new arm"})
    prior_beta: float = field(default=1.0, metadata={"help": "Beta prior beta of a new arm"})
    explore_weight: float = field(default=0.2, metadata={"help": "weight of the Thompson draw in re-ranking"})
    bandit_policy: str = field(
        default="thompson",
        metadata={"help": "re-ranking policy: thompson, ucb1[:c=2], egreedy[:epsilon=0.1]"},
    )
    bandit_half_life_ms: float = field(
        default=0.0, metadata={"help": "half-life of bandit counts in event time (ms); 0 = no discounting"})
    bandit_context: str = field(default="", metadata={
        "help": "per-context arms: '' (none), 'position' or 'segment' (needs segments_k > 0)"})
    bandit_top_arms: int = field(default=20, metadata={"help": "arms exported as per-arm metrics (top by impressions)"})
    bandit_max_arms: int = field(default=100_000, metadata={
        "help": "most arms counted per partition (and per-position table); events of new arms "
                "beyond it are not counted (profiles_bandit_arms_dropped_total)"})
    decisions_topic: str = field(default="", metadata={"help": "log served rankings to this topic ('' = off)"})
    seed: int = field(default=42, metadata={"help": "seed of every random generator"})
    batch_size: int = field(default=500, metadata={"help": "max events per micro-batch"})
    batch_max_wait_s: float = field(default=0.05, metadata={"help": "max seconds a micro-batch waits to fill"})
    apply_slice: int = field(default=128, metadata={
        "help": "fewest records of a micro-batch applied at once while the worker serves "
                "requests; requests are answered between slices (stream.worker.slicing); 0 = "
                "the whole batch at once"})
    apply_slice_ms: float = field(default=20.0, metadata={
        "help": "while serving, a slice holds as many records as the loop applies in this many "
                "ms of CPU (measured, at least PROFILES_APPLY_SLICE); 0 = always "
                "PROFILES_APPLY_SLICE records"})
    encoder_path: str = field(default="", metadata={"help": "model folder (empty: the bundled all-MiniLM-L6-v2)"})
    encoder_device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    encoder_kind: str = field(default="transformer", metadata={"help": "transformer, or hashing (tests only)"})
    encoder_dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast on CUDA and on CPUs with avx512_bf16 or amx_bf16, else "
                "fp32), fp32 or bf16; the vectors' fingerprint says bf16, so a switch needs "
                "`profiles rebuild`"})
    encoder_trace: bool = field(default=True, metadata={
        "help": "run the worker's transformer as a TorchScript trace on CPU: one C++ call per "
                "forward instead of a few hundred ops that each wait for the GIL beside the busy "
                "event loop (the same vectors, bit for bit)"})
    encoder_batch: int = field(default=128, metadata={"help": "max texts per encoder batch"})
    encoder_threads: int = field(default=1, metadata={
        "help": "torch threads of the worker's encoder (0: torch's default, one per core); "
                "more than one stalls short query batches whenever the cores are busy"})
    encoder_max_wait_s: float = field(default=0.01, metadata={"help": "max seconds a text waits for an encoder batch"})
    faiss_threads: int = field(default=1, metadata={
        "help": "OpenMP threads of FAISS calls on the worker's event loop (searches, users-index "
                "updates; 0: FAISS's default, one per core); more than one stalls them whenever "
                "the cores are busy (stream.worker.faiss_threads)"})
    blas_threads: int = field(default=1, metadata={
        "help": "threads of numpy's BLAS (OpenBLAS) in the worker (0: its default, one per core); "
                "more than one stalls the small products of requests and batches whenever the "
                "cores are busy (stream.worker.blas_threads)"})
    malloc_mmap_threshold: int = field(default=4 << 20, metadata={
        "help": "glibc's mmap threshold in the worker (bytes; 0: glibc's dynamic default, up to "
                "32 MiB; the trim threshold is set to 8x it): blocks at least this large are mapped "
                "and given back on free, so doubling tables leave no heap holes "
                "(stream.worker.malloc_tune)"})
    gil_switch_ms: float = field(default=1.0, metadata={
        "help": "the interpreter's thread switch interval in the worker (sys.setswitchinterval, "
                "ms; Python's default 5): how long the event loop waits for the GIL after a "
                "FAISS call or I/O while a snapshot serialises on a thread (stream.worker.gil)"})
    encoder_cache_bytes: int = field(default=64 * 1024 * 1024, metadata={
        "help": "bytes of query vectors (with their texts) kept in the LRU query cache (0: none)"})
    http_host: str = field(default="127.0.0.1", metadata={"help": "HTTP bind address"})
    http_port: int = field(default=8080, metadata={"help": "HTTP port (API + /metrics)"})
    processes: int = field(default=0, metadata={
        "help": "worker processes of `profiles worker` on this host, one consumer-group member "
                "each, supervised behind http_port (0: one per core, at most `partitions`; 1: "
                "the plain worker, no supervisor)"})
    front_max_body_bytes: int = field(default=4 << 20, metadata={
        "help": "largest request body the parent of `--processes N` forwards to a worker "
                "process; a larger one gets 413 (profiles_front_bodies_rejected_total)"})
    http_max_body_bytes: int = field(default=4 << 20, metadata={
        "help": "largest request body a worker's own HTTP API reads (each child of --processes "
                "N too); a larger one gets 413 (profiles_http_bodies_rejected_total)"})
    min_ts: int = field(default=0, metadata={"help": "reject events with ts (epoch ms) below this"})
    max_future_ms: int = field(default=86_400_000, metadata={
        "help": "reject ts (ts_in_future) beyond the earlier of the Kafka timestamp and the "
                "worker's clock + this (a record without a Kafka timestamp: the clock + this)"})
    max_text_len: int = field(default=1024, metadata={"help": "max characters of a query or title"})
    max_message_bytes: int = field(default=65536, metadata={"help": "max bytes of one event message"})
    max_id_bytes: int = field(default=256, metadata={
        "help": "max UTF-8 bytes of user_id, event_id, item_id and arm (longer: DLQ oversized)"})
    dlq_refs_per_user: int = field(default=1000, metadata={
        "help": "dead letters per user and partition remembered for erasure; beyond it a user's "
                "dead letter is stored anonymous: no value, no user (0: no bound)"})
    park_timeout_s: float = field(default=60.0, metadata={"help": "seconds an event waits for its item"})
    max_parked: int = field(default=100_000, metadata={"help": "max parked events per worker"})
    parked_max_bytes: int = field(default=134_217_728, metadata={
        "help": "max bytes of parked events per worker, each 2 x its message + 320 (over: the "
                "oldest go to the DLQ, park_overflow)"})
    dedupe_window: int = field(default=1_000_000, metadata={
        "help": "(user, event id) pairs remembered per partition (a 16-byte digest each)"})
    session_timeout_s: float = field(default=6.0, metadata={
        "help": "Kafka consumer session timeout (a SIGKILLed member's partitions wait this long; "
                "over ~6 s the restarted worker's first join misses it and a second follows)"})
    fetch_max_wait_ms: int = field(default=50, metadata={"help": "longest a Fetch waits for new data"})
    gc_freeze: bool = field(default=True, metadata={
        "help": "once ready and after each assignment, move what the worker holds into the "
                "garbage collector's permanent generation (gc.freeze): full collections then "
                "skip it instead of pausing every batch for its whole size"})
    fetch_max_bytes: int = field(default=1_048_576, metadata={
        "help": "most bytes one Fetch returns: bounds the records a lagging worker holds in memory"})
    max_request_bytes: int = field(default=1_048_576, metadata={
        "help": "most bytes of one record the worker produces (producer max_request_size); a "
                "bigger dead letter is stored truncated"})
    batch_attempts: int = field(default=3, metadata={
        "help": "tries of a failing batch before it is bisected, and of a record alone before "
                "it goes to the DLQ (processing_error)"})
    retry_backoff_s: float = field(default=0.1, metadata={
        "help": "first wait before a failed batch is retried (doubles each try)"})
    retry_max_backoff_s: float = field(default=10.0, metadata={
        "help": "longest wait between retries (a DLQ or encoder outage retries at this pace)"})
    # -- privacy and protection (README, "Privacy and failure") ------------------
    id_secret: Secret = field(default=Secret(""), metadata={
        "help": "HMAC-SHA256 key: user ids are pseudonymised at ingest (empty: raw ids are stored)"})
    id_cache_bytes: int = field(default=32 << 20, metadata={
        "help": "bytes of the LRU cache of pseudonyms (id size + 180 per entry; 0: no cache)"})
    api_token: Secret = field(default=Secret(""), metadata={
        "help": "bearer token required by the HTTP API except /metrics, /healthz and /readyz (empty: open, which the worker allows on a loopback PROFILES_HTTP_HOST only)"})
    allow_open_api: bool = field(default=False, metadata={
        "help": "serve the API without a token on a non-loopback http_host (else the worker refuses)"})
    profile_ttl_ms: int = field(default=0, metadata={
        "help": "drop profiles idle this long in event time vs the partition's watermark (0: keep)"})
    ttl_watermark_rank: int = field(default=DEFAULT_TTL_RANK, metadata={
        "help": "the TTL's watermark is the partition's Nth largest event time applied: fewer "
                "than N future-dated events cannot move it"})
    rate_limit_events: int = field(default=0, metadata={
        "help": "max events per user per rate window of event time (0: no cap)"})
    rate_limit_window_ms: int = field(default=60_000, metadata={"help": "the rate window (event time, ms)"})
    advertised_url: str = field(default="", metadata={
        "help": "URL other workers use to reach this one (default http://http_host:http_port)"})
    security_protocol: str = field(default="PLAINTEXT", metadata={
        "help": "Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"})
    sasl_mechanism: str = field(default="PLAIN", metadata={"help": "Kafka SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"})
    sasl_username: str = field(default="", metadata={"help": "Kafka SASL user"})
    sasl_password: Secret = field(default=Secret(""), metadata={"help": "Kafka SASL password"})
    ssl_cafile: str = field(default="", metadata={"help": "CA bundle for Kafka TLS"})
    log_level: str = field(default="info", metadata={"help": "log level"})
    cache_dir: str = field(default="", metadata={
        "help": "where downloaded data sets are kept (empty: $XDG_CACHE_HOME/profiles, else "
                "~/.cache/profiles)"})
    # -- collaborative signals and candidates (README, "Candidates") --------------
    signals_topic: str = field(default="", metadata={
        "help": "compacted topic of the signal partials every worker reads ('' = <events topic>.signals)"})
    signals_publish_ms: int = field(default=1000, metadata={
        "help": "changed signal partials are published this often (ms): bounds other workers' staleness"})
    signals_recent_n: int = field(default=SignalParams.recent_n, metadata={
        "help": "recent items kept per user for co-visitation (erased by forget)"})
    signals_pop_short_half_life_ms: float = field(default=float(SignalParams.pop_short_half_life_ms), metadata={
        "help": "half-life of the short (trending) item popularity, event time (ms)"})
    signals_pop_long_half_life_ms: float = field(default=float(SignalParams.pop_long_half_life_ms), metadata={
        "help": "half-life of the long item popularity, event time (ms)"})
    signals_covis_window_ms: float = field(default=float(SignalParams.covis_window_ms), metadata={
        "help": "two items of a user are co-visited when at most this far apart (ms)"})
    signals_covis_half_life_ms: float = field(default=float(SignalParams.covis_half_life_ms), metadata={
        "help": "half-life of co-visitation weights, event time (ms)"})
    signals_covis_backward: float = field(default=float(SignalParams.covis_backward), metadata={
        "help": "weight of a co-visited pair in the backward direction (1 symmetric, < 1 favours "
                "what comes next; equal-ts pairs stay symmetric)"})
    signals_covis_top_m: int = field(default=SignalParams.covis_top_m, metadata={
        "help": "co-visitation neighbours published and served per item"})
    signals_covis_capacity: int = field(default=SignalParams.covis_capacity, metadata={
        "help": "co-visitation neighbours kept per item per partition (the weakest is evicted)"})
    purchased_items: str = field(default="exclude", metadata={
        "help": "bought items in /candidates: exclude, or buy_again (served by the buy_again source)"})
    interests_k: int = field(default=4, metadata={
        "help": "interest vectors per user (multi-interest profiles, stream/core/interests.py): "
                "0 = off, at most 32"})
    interests_threshold: float = field(default=0.5, metadata={
        "help": "cosine at or above which an event joins its nearest interest (else it opens "
                "one), in [-1, 1]"})
    segments_k: int = field(default=0, metadata={
        "help": "customer segments (streaming k-means over profiles): how many; 0 = off"})
    segments_every_s: float = field(default=60.0, metadata={
        "help": "segment statistics are published, and a new centroid version computed, this often (s)"})
    ranker_dir: str = field(default="", metadata={
        "help": "CTR ranker folder from `profiles ranker train` (empty: the default linear ranker)"})
    index_kind: str = field(default="auto", metadata={
        "help": "items and users indexes: auto (exact below index_exact_below vectors, IVF above), "
                "flat (always exact) or ivf"})
    index_exact_below: int = field(default=20_000, metadata={
        "help": "auto index kind: vectors below which search is exact (>= 78)"})
    index_nprobe: int = field(default=0, metadata={
        "help": "IVF lists probed per search (0: the fewest reaching index_target_recall, "
                "measured at each training)"})
    index_target_recall: float = field(default=0.99, metadata={
        "help": "with index_nprobe 0: the recall@20 against exact search that each IVF training "
                "calibrates its lists probed to reach, on profile-like queries from its vectors "
                "(0 < r <= 1)"})
    index_user_codes: str = field(default="SQ4", metadata={
        "help": "users IVF codes above index_exact_below: SQ4/SQ6/SQ8/SQfp16 (compressed, re-ranked "
                "exactly from the profiles: no float32 copy) or Flat"})
    explain_events: int = field(default=5, metadata={
        "help": "recent events and co-visited items listed per candidate by /candidates?explain=1 "
                "(1..100; the rest are summed)"})
    # -- cold start and personalised search (issue 13; stream/core/search.py) ------
    search_blend: float = field(default=0.1, metadata={
        "help": "weight of the user's interests against query relevance in /users/{id}/search (0: plain relevance)"})
    search_pool: int = field(default=200, metadata={
        "help": "items fetched from the item index per search query (the blend re-ranks them)"})
    search_max_chars: int = field(default=256, metadata={
        "help": "most characters of a search query (longer: 400)"})
    explore_new_arms: int = field(default=0, metadata={
        "help": "arms with fewer impressions than this get an optimistic prior in the bandit re-rank (0: off)"})
    explore_new_arm_bonus: float = field(default=1.0, metadata={
        "help": "pseudo-rewards added to an unseen arm's Beta alpha, shrinking linearly to 0 at explore_new_arms impressions"})

    # -- derived, validated views ------------------------------------------------
    def event_weight_map(self) -> dict[str, float]:
        return _weights(self.event_weights)

    def reward_weight_map(self) -> dict[str, float]:
        return _weights(self.reward_weights)

    def limits(self) -> Limits:
        """Validation bounds of events and items."""
        return Limits(min_ts=self.min_ts, max_future_ms=self.max_future_ms,
                      max_text_len=self.max_text_len, max_bytes=self.max_message_bytes,
                      max_id_bytes=self.max_id_bytes)

    def profile_params(self) -> ProfileParams:
        """Half-life and event weights of the profile vectors."""
        return ProfileParams(half_life_ms=self.half_life_ms, weights=self.event_weight_map())

    def bandit_params(self) -> BanditParams:
        """Prior, rewards, discounting and context of the bandit counts."""
        return BanditParams(prior_alpha=self.prior_alpha, prior_beta=self.prior_beta,
                            reward_weights=self.reward_weight_map(),
                            half_life_ms=self.bandit_half_life_ms or None,
                            context=self.bandit_context, max_arms=self.bandit_max_arms)

    def signal_params(self) -> SignalParams:
        """Half-lives, window and bounds of the collaborative signals; event weights are the
        profile's (``event_weights``)."""
        return SignalParams(
            pop_short_half_life_ms=self.signals_pop_short_half_life_ms,
            pop_long_half_life_ms=self.signals_pop_long_half_life_ms,
            recent_n=self.signals_recent_n, covis_window_ms=self.signals_covis_window_ms,
            covis_half_life_ms=self.signals_covis_half_life_ms,
            covis_backward=self.signals_covis_backward, covis_top_m=self.signals_covis_top_m, covis_capacity=self.signals_covis_capacity,
            weights=self.event_weight_map())

    def hybrid_params(self, **tuned: Any) -> HybridParams:
        """Candidate generation: ``tuned`` pool sizes and sources (a ranker directory's
        ``hybrid`` entry, chosen on validation data), and whether bought items are excluded
        (``purchased_items``: this setting always decides)."""
        tuned.pop("exclude_purchased", None)
        if "sources" in tuned:
            tuned["sources"] = tuple(tuned["sources"])
        return HybridParams(exclude_purchased=self.purchased_items == "exclude", **tuned)

    def interest_params(self) -> InterestParams | None:
        """Multi-interest profiles (``interests_k``; None when 0 = off), with the profile's
        half-life."""
        if self.interests_k == 0:
            return None
        return InterestParams(k=self.interests_k, threshold=self.interests_threshold,
                              half_life_ms=self.half_life_ms)

    def search_params(self) -> SearchParams:
        """Blend weight, pool and query bound of personalised search."""
        return SearchParams(blend=self.search_blend, pool=self.search_pool,
                            max_chars=self.search_max_chars)

    def signals_topic_name(self) -> str:
        """The signals topic: ``signals_topic``, else ``<events topic>.signals`` (so every
        events topic, e.g. a test's, has its own)."""
        return self.signals_topic or f"{self.events_topic}.signals"

    def changelog_topic_name(self) -> str:
        """The state changelog topic: ``changelog_topic``, else ``<events topic>-changelog``."""
        return self.changelog_topic or f"{self.events_topic}-changelog"

    def cache_path(self) -> Path:
        """Folder for downloaded data sets (``cache_dir``, else the XDG cache folder)."""
        if self.cache_dir:
            return Path(self.cache_dir)
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "profiles"

    def __post_init__(self) -> None:
        for f in fields(self):  # flags and overrides arrive as plain str: keep secrets masked
            if isinstance(f.default, Secret) and not isinstance(getattr(self, f.name), Secret):
                object.__setattr__(self, f.name, Secret(getattr(self, f.name) or ""))
        problems = []
        for name in ("half_life_ms", "snapshot_interval_s", "snapshot_budget", "batch_max_wait_s",
                     "park_timeout_s", "session_timeout_s", "retry_backoff_s",
                     "retry_max_backoff_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be > 0, got {value}")
        if self.snapshot_budget > 1:
            problems.append(f"snapshot_budget is a share of time, at most 1, got {self.snapshot_budget}")
        if self.snapshot_max_deltas < 0:
            problems.append(f"snapshot_max_deltas must be >= 0, got {self.snapshot_max_deltas}")
        if self.apply_slice_ms < 0:
            problems.append(f"apply_slice_ms must be >= 0 (0 = fixed slices), got "
                            f"{self.apply_slice_ms}")
        if self.apply_slice < 0:
            problems.append(f"apply_slice must be >= 0 (0 = the whole batch), got {self.apply_slice}")
        for name in ("batch_size", "encoder_batch", "partitions", "dedupe_window", "max_text_len", "max_message_bytes",
                     "fetch_max_bytes", "max_id_bytes", "parked_max_bytes", "batch_attempts"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.bandit_half_life_ms) and self.bandit_half_life_ms >= 0):
            problems.append(f"bandit_half_life_ms must be >= 0 (0 = off), got {self.bandit_half_life_ms}")
        if self.bandit_context not in ("", "position", "segment"):
            problems.append(f"bandit_context must be '', 'position' or 'segment', got {self.bandit_context!r}")
        if self.segments_k < 0 or self.segments_k > 256:
            problems.append(f"segments_k must be in 0..256 (0 = off), got {self.segments_k}")
        if self.bandit_context == "segment" and self.segments_k < 1:
            problems.append("bandit_context=segment needs segments_k >= 1")
        if not (math.isfinite(self.segments_every_s) and self.segments_every_s > 0):
            problems.append(f"segments_every_s must be > 0, got {self.segments_every_s}")
        if self.bandit_top_arms < 0:
            problems.append(f"bandit_top_arms must be >= 0, got {self.bandit_top_arms}")
        if self.dlq_refs_per_user < 0:
            problems.append(f"dlq_refs_per_user must be >= 0 (0: no bound), got "
                            f"{self.dlq_refs_per_user}")
        if self.bandit_max_arms < 1:
            problems.append(f"bandit_max_arms must be >= 1, got {self.bandit_max_arms}")
        if self.encoder_threads < 0:
            problems.append(f"encoder_threads must be >= 0 (0: torch's default), got "
                            f"{self.encoder_threads}")
        if self.blas_threads < 0:
            problems.append(f"blas_threads must be >= 0 (0: the BLAS default), got "
                            f"{self.blas_threads}")
        if self.faiss_threads < 0:
            problems.append(f"faiss_threads must be >= 0 (0: FAISS's default), got "
                            f"{self.faiss_threads}")
        if self.malloc_mmap_threshold != 0 and not 4096 <= self.malloc_mmap_threshold <= 32 << 20:
            problems.append(f"malloc_mmap_threshold must be 0 (glibc's default) or in "
                            f"4096..33554432 bytes, got {self.malloc_mmap_threshold}")
        if not 0.05 <= self.gil_switch_ms <= 100:
            problems.append(f"gil_switch_ms must be in 0.05..100, got {self.gil_switch_ms}")
        if self.encoder_cache_bytes < 0:
            problems.append(f"encoder_cache_bytes must be >= 0 (0: no cache), got "
                            f"{self.encoder_cache_bytes}")
        if isinstance(self.allow_open_api, str):  # a CLI flag arrives as text
            flag = _flag(self.allow_open_api)
            if flag is None:
                problems.append(f"allow_open_api must be true or false, got {self.allow_open_api!r}")
            object.__setattr__(self, "allow_open_api", bool(flag))
        try:
            parse_policy(self.bandit_policy)
        except ValueError as exc:
            problems.append(f"bandit_policy: {exc}")
        if not 0 <= self.explore_weight <= 1:
            problems.append(f"explore_weight must be in [0, 1], got {self.explore_weight}")
        if not 0 < self.http_port < 65536:
            problems.append(f"http_port must be in 1..65535, got {self.http_port}")
        if not 0 <= self.processes <= 1024:
            problems.append(f"processes must be in 0..1024 (0: one per core), got {self.processes}")
        if not 1 <= self.front_max_body_bytes <= 1 << 30:
            problems.append(f"front_max_body_bytes must be in 1..{1 << 30} (1 GiB), got "
                            f"{self.front_max_body_bytes}")
        if not 1 <= self.http_max_body_bytes <= 1 << 30:
            problems.append(f"http_max_body_bytes must be in 1..{1 << 30} (1 GiB), got "
                            f"{self.http_max_body_bytes}")
        if self.encoder_device not in ("auto", "cpu", "cuda"):
            problems.append(f"encoder_device must be auto, cpu or cuda, got {self.encoder_device!r}")
        if self.encoder_dtype not in ("auto", "fp32", "bf16"):
            problems.append(f"encoder_dtype must be auto, fp32 or bf16, got {self.encoder_dtype!r}")
        if self.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            problems.append(f"security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, "
                            f"got {self.security_protocol!r}")
        if self.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            problems.append(f"sasl_mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, "
                            f"got {self.sasl_mechanism!r}")
        if self.id_cache_bytes < 0:
            problems.append(f"id_cache_bytes must be >= 0 (0 = no cache), got {self.id_cache_bytes}")
        for name in ("profile_ttl_ms", "rate_limit_events"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.ttl_watermark_rank < 1:
            problems.append(f"ttl_watermark_rank must be >= 1, got {self.ttl_watermark_rank}")
        if self.max_future_ms < 0:
            problems.append(f"max_future_ms must be >= 0, got {self.max_future_ms}")
        topic = self.changelog_topic
        if topic and (len(topic) > 249 or topic in (".", "..") or not all(
                c.isascii() and (c.isalnum() or c in "._-") for c in topic)):
            problems.append(f"changelog_topic must be a Kafka topic name (letters, digits, '.', "
                            f"'_', '-'; at most 249), got {topic!r}")
        if self.rate_limit_window_ms < 1:
            problems.append(f"rate_limit_window_ms must be >= 1, got {self.rate_limit_window_ms}")
        for name in ("signals_publish_ms", "signals_recent_n", "signals_covis_top_m",
                     "signals_covis_capacity"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.explain_events <= 100:
            problems.append(f"explain_events must be in 1..100, got {self.explain_events}")
        for name in ("signals_pop_short_half_life_ms", "signals_pop_long_half_life_ms",
                     "signals_covis_window_ms", "signals_covis_half_life_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be > 0, got {value}")
        if not (math.isfinite(self.signals_covis_backward)
                and 0 <= self.signals_covis_backward <= 1):
            problems.append(f"signals_covis_backward must be in [0, 1], got "
                            f"{self.signals_covis_backward}")
        if self.signals_covis_capacity < self.signals_covis_top_m:
            problems.append(f"signals_covis_capacity ({self.signals_covis_capacity}) must be >= "
                            f"signals_covis_top_m ({self.signals_covis_top_m})")
        if self.purchased_items not in ("exclude", "buy_again"):
            problems.append(f"purchased_items must be exclude or buy_again, got {self.purchased_items!r}")
        if self.encoder_kind not in ("transformer", "hashing"):
            problems.append(f"encoder_kind must be transformer or hashing, got {self.encoder_kind!r}")
        if self.index_kind not in ("auto", "flat", "ivf"):
            problems.append(f"index_kind must be auto, flat or ivf, got {self.index_kind!r}")
        if self.index_exact_below < 78:
            problems.append(f"index_exact_below must be >= 78, got {self.index_exact_below}")
        if self.index_nprobe < 0:
            problems.append(f"index_nprobe must be >= 0 (0: auto), got {self.index_nprobe}")
        if not 0.0 < self.index_target_recall <= 1.0:
            problems.append(f"index_target_recall must be in (0, 1], got {self.index_target_recall}")
        if self.index_user_codes not in ("Flat", "SQfp16", "SQ8", "SQ6", "SQ4"):
            problems.append("index_user_codes must be Flat, SQfp16, SQ8, SQ6 or SQ4, got "
                            f"{self.index_user_codes!r}")
        try:
            self.search_params()
        except ValueError as exc:
            problems.append(str(exc))
        if not 0 <= self.interests_k <= 32:
            problems.append(f"interests_k must be in 0..32 (0 = off), got {self.interests_k}")
        elif not (math.isfinite(self.interests_threshold)
                  and -1 <= self.interests_threshold <= 1):
            problems.append(f"interests_threshold must be in [-1, 1], got "
                            f"{self.interests_threshold}")
        if self.explore_new_arms < 0:
            problems.append(f"explore_new_arms must be >= 0 (0: off), got {self.explore_new_arms}")
        if not (math.isfinite(self.explore_new_arm_bonus) and self.explore_new_arm_bonus >= 0):
            problems.append(f"explore_new_arm_bonus must be finite and >= 0, got "
                            f"{self.explore_new_arm_bonus}")
        for name in ("event_weights", "reward_weights"):
            try:
                parsed = _weights(getattr(self, name))
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
                continue
            bad = [k for k, v in parsed.items() if not (math.isfinite(v) and v >= 0)]
            if bad:
                problems.append(f"{name}: weights must be finite and >= 0 ({', '.join(bad)})")
        if problems:
            raise ConfigError("; ".join(problems))

    # -- construction ------------------------------------------------------------
    @classmethod
    def env_name(cls, name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``PROFILES_*`` variables (then apply explicit overrides, e.g. CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(cls.env_name(f.name))
            if raw is not None:
                values[f.name] = _convert(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[self.env_name(f.name)] = value.reveal() if isinstance(value, Secret) else str(value)
        return out

    def public_url(self) -> str:
        return self.advertised_url or f"http://{self.http_host}:{self.http_port}"

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment with these settings (and ``extra``) on top: for a child
        process such as ``profiles worker``."""
        return {**os.environ, **self.to_env(), **(extra or {})}


def _flag(text: str) -> bool | None:
    """A boolean setting's text: true/false (1/0, yes/no, on/off, empty); None otherwise."""
    v = text.strip().lower()
    return True if v in ("1", "true", "yes", "on") else (
        False if v in ("", "0", "false", "no", "off") else None)


def _convert(f: dataclasses.Field, raw: str) -> Any:
    kind = type(f.default)
    if kind is Secret:
        return Secret(raw)
    try:
        if kind is bool:
            flag = _flag(raw)
            if flag is None:
                raise ValueError(raw)
            return flag
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{Settings.env_name(f.name)}={raw!r} is not a valid {kind.__name__}") from None
    return raw
