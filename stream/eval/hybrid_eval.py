"""The stream's collaborative methods in the replay: co-visitation alone, SASRec, and the
hybrid (``stream.core.hybrid.generate`` + ``stream.core.ranker.Ranker``, the code the worker
serves with).

The evaluator is one worker that owns every partition: the signals (``stream.core.signals``)
are applied as the events happen and published, as partition 0, to a ``SignalView``, from which
``generate`` reads, as the worker's ``/candidates`` does.  Publishing is lazy (a changed
co-visitation row is published when it is first read): the view then holds exactly what eager
publishing would give.  Inputs to ``generate`` for a query at ``t`` (state as of ``ts < t``):

- ``recent``: ``Signals.recent.get(user)``; ``now``: the newest item event applied (the worker
  serves as of the newest event time in its view);
- ``content``: the exact top ``content_k`` items by profile . item (float32, as the exact index
  computes it) outside the excluded set; ``similarity``: profile . item for the others;
- ``exclude``: new-items protocol, the user's history; all-items protocol, nothing, with
  ``exclude_purchased`` off (purchased items come back through ``buy_again``);
- ``user_categories``: ``UserStats.categories`` (as the worker); ``item_category``: the catalogue.

Choices, all on the validation queries of the run: the co-visitation settings (window,
recency half-life) by the validation Recall@20 of co-visitation alone, which the hybrid then
uses; the ranker family and its settings (``stream.eval.rankers``), fitted on the validation
candidates (label = the candidate is a target).  Ablations refit the same ranker configuration
without a source or a feature group (``ABLATIONS``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stream.core.hybrid import (
    FEATURES,
    SOURCES,
    Candidates,
    HybridParams,
    generate,
    serve_scores,
)
from stream.core.profile import UserStats
from stream.core.ranker import Ranker
from stream.core.signals import SignalParams, Signals, SignalView
from stream.eval.data import EvalLog, Queries, Visibility, user_history
from stream.eval.metrics import expected_metrics
from stream.eval.rankers import CandidateSet, choose_ranker, fit_one
from stream.eval.replay import Method, Step, StreamState, run_replay, step_of, steps

HOUR_MS = 3_600_000
DAY_MS = 86_400_000

# ablation name -> (sources removed, features removed)
ABLATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hybrid-content": (("content",), ("content_sim", "src_content")),
    "hybrid-covis": (("covis",), ("covis_score", "covis_recency", "src_covis")),
    "hybrid-trending": (("trending",), ("src_trending",)),
    "hybrid-popularity": ((), ("pop_short", "pop_long", "trend")),
    "hybrid-category": ((), ("category_match",)),
    "hybrid-sequence": (("sequence",), ("seq_lift", "src_sequence")),
    # the same ranker without the freshness rule (HybridParams.fresh_every = 0)
    "hybrid-fresh": ((), ()),
}
# (covis window, recency half-life) tried for co-visitation, on validation
COVIS_GRID: tuple[tuple[int, int], ...] = (
    (HOUR_MS, DAY_MS), (DAY_MS, DAY_MS), (7 * DAY_MS, DAY_MS))


class LazyView(SignalView):
    """A SignalView fed by one ``Signals`` (partition 0): popularity partials are put after
    every batch, a changed co-visitation row when it is next read."""

    def __init__(self, signals: Signals) -> None:
        super().__init__(signals.params)
        self._src = signals
        self._dirty: set[str] = set()

    def sync(self) -> None:
        pop, cov = self._src.take_changed()
        for it in pop:
            self.put_pop(0, it, self._src.popularity.partial(it))
        self._dirty |= cov

    def neighbours(self, item: str, now: float, m: int | None = None) -> list[tuple[str, float]]:
        if item in self._dirty:
            self.put_covis(0, item, self._src.covis.partial(item))
            self._dirty.discard(item)
        return super().neighbours(item, now, m)


class Collab:
    """Signals + user stats of the replay, applied with the stream state (a listener)."""

    def __init__(self, ev: EvalLog, params: SignalParams, stats_params: Any) -> None:
        self.ev = ev
        self.signals = Signals(params)
        self.view = LazyView(self.signals)
        self.stats = UserStats(stats_params)
        self.newest = 0
        self._cat = [ev.categories[r] if r < ev.n_items else None for r in range(len(ev.texts))]

    def __call__(self, pos: np.ndarray) -> None:
        ev = self.ev
        if len(pos) == 0:
            return
        users = [ev.users[u] for u in ev.user[pos].tolist()]
        rows = ev.row[pos].tolist()
        types = [ev.types[i] for i in pos.tolist()]
        item_ids: list[str | None] = [ev.item_ids[r] if r < ev.n_items else None for r in rows]
        self.stats.update(users, types, ev.ts[pos], [self._cat[r] for r in rows], item_ids)
        it = ev.is_item[pos]
        if it.any():
            ip = pos[it]
            self.signals.apply([users[i] for i in np.flatnonzero(it).tolist()],
                               [ev.item_ids[r] for r in ev.row[ip].tolist()], ev.ts[ip],
                               [types[i] for i in np.flatnonzero(it).tolist()])
            self.newest = max(self.newest, int(ev.ts[ip].max()))
        self.view.sync()


@dataclass
class GenSettings:
    signal: SignalParams
    hybrid: HybridParams
    vectors: str | None  # which encoder's profiles feed the content source (None: no content)
    sequence: Any = None  # encoder.sequence.SequenceModel for the sequence source (None: off)
    # the content source's hits instead of the profile's exact top content_k: an object with
    # ``attach(state)`` and ``hits(state, user, masked, sims, k)`` (stream.eval.interests_eval:
    # per-interest queries with importance quotas)
    content_hits: Any = None


def candidates(ev: EvalLog, st: StreamState, collab: Collab, step: Step, r: int,
               protocol: str, hp: HybridParams, vec_name: str | None,
               sequence: Any = None, content_hits: Any = None) -> Candidates:
    """``generate`` for query ``r`` of ``step`` (module docstring: the inputs)."""
    u = int(step.users[r])
    user = ev.users[u]
    if protocol == "new":
        exclude_rows = step.hist_items[r]
        exclude = {ev.item_ids[x] for x in exclude_rows.tolist()}
        hp = replace(hp, exclude_purchased=True)
    else:
        exclude_rows = np.zeros(0, dtype=np.int64)
        exclude = set()
        hp = replace(hp, exclude_purchased=False)
    bought = collab.stats.purchased(user)
    content: list[tuple[str, float]] = []
    similarity = None
    vec = st.profile(vec_name, u) if vec_name is not None else None
    if vec is not None and vec_name is not None:
        sims = st.vectors[vec_name][: ev.n_items] @ vec  # float32, as the exact index
        if hp.content_k and "content" in hp.sources:
            masked = sims.astype(np.float64)
            masked[exclude_rows] = -np.inf
            if hp.exclude_purchased and bought:
                masked[[ev_row for ev_row in _rows_of(ev, bought)]] = -np.inf
            k = min(hp.content_k, int(np.isfinite(masked).sum()))
            if k > 0 and content_hits is not None:
                content = content_hits.hits(st, u, masked, sims, k)
            elif k > 0:  # the exact top k; equal similarities by item id
                top = np.lexsort((ev.id_rank, -masked))[:k]
                content = [(ev.item_ids[i], float(sims[i])) for i in top.tolist()]
        row_of = ev.row_of

        def similarity(ids: list[str]) -> np.ndarray:
            return sims[[row_of[i] for i in ids]].astype(np.float64)

    recent = collab.signals.recent.get(user)
    seq_hits: list[tuple[str, float]] = []
    lifts = None
    if sequence is not None:  # as the worker: SequenceModel.lifts of the kept recent events
        lifts = sequence.lifts(collab.signals.recent.get(user, sequence.max_len))
        if "sequence" in hp.sources and hp.sequence_k:
            seq_hits = lifts.top(hp.sequence_k, exclude | set(bought) if hp.exclude_purchased
                                 else exclude)
    return generate(recent, content, collab.view, collab.newest, hp,
                    exclude=exclude, user_categories=collab.stats.categories(user),
                    item_category=ev.category_of, bought=bought, similarity=similarity,
                    sequence=seq_hits, sequence_lift=lifts)


def _rows_of(ev: EvalLog, ids: Sequence[str] | frozenset[str]) -> list[int]:
    idx = ev.row_of
    return [idx[i] for i in ids if i in idx]


def _scores(ev: EvalLog, cands: Candidates, values: np.ndarray, keep: np.ndarray | None = None
            ) -> np.ndarray:
    out = np.full(ev.n_items, -np.inf)
    idx = ev.row_of
    rows = np.fromiter((idx[i] for i in cands.items), dtype=np.int64, count=len(cands))
    if keep is None:
        out[rows] = values
    else:
        out[rows[keep]] = values
    return out


# --------------------------------------------------------------------------- co-visitation

def covis_method(collab: Collab, hp: HybridParams, name: str = "covis") -> Method:
    """Co-visitation alone: ``generate``'s covis source (its top ``covis_k`` items by summed
    co-visitation score), ranked by that score (``covis_score``); other items are not
    candidates (they tie below)."""
    hp1 = replace(hp, sources=("covis",), content_k=0, trending_k=0, buy_again_k=0)
    col = FEATURES.index("covis_score")

    def score(st: StreamState, step: Step, p: str) -> np.ndarray:
        out = np.empty((len(step.idx), st.ev.n_items))
        for r in range(len(step.idx)):
            c = candidates(st.ev, st, collab, step, r, p, hp1, None)
            out[r] = _scores(st.ev, c, c.features[:, col])
        return out

    return Method(name, score, protocols=("new",), per_protocol=True)


def tune_covis(ev: EvalLog, vis: Visibility, val: Queries, params: Any,
               grid: Sequence[tuple[int, int]] | None = None, max_queries: int = 2000,
               seed: int = 0, say: Callable[[str], None] = lambda s: None
               ) -> tuple[SignalParams, HybridParams, list[dict]]:
    """The (window, recency half-life) with the best validation Recall@20 of covis alone (new
    items), on at most ``max_queries`` validation queries (seeded sample), all settings in one
    replay."""
    grid = list(grid or COVIS_GRID)
    if len(val) > max_queries:
        keep = np.zeros(len(val), dtype=bool)
        keep[np.random.default_rng(seed).choice(len(val), max_queries, replace=False)] = True
        val = val.select(keep)
    st = StreamState(ev, vis, windows_days=(), profile_params=params)
    collabs: dict[int, Collab] = {}
    methods, settings = [], []
    for i, (window, half) in enumerate(grid):
        if window not in collabs:
            sp = SignalParams(covis_window_ms=float(window), weights=dict(params.weights))
            collabs[window] = Collab(ev, sp, params)
            st.listeners.append(collabs[window])
        hp = HybridParams(recent_half_life_ms=float(half))
        methods.append(covis_method(collabs[window], hp, name=f"covis{i}"))
        settings.append((collabs[window].signals.params, hp))
    res = run_replay(ev, vis, val, st, methods)
    curve = []
    best: tuple[float, int] | None = None
    for i, (window, half) in enumerate(grid):
        g, e = res.counts(f"covis{i}", "new")
        r = float(expected_metrics(g, e)["recall@20"].mean()) if len(g) else 0.0
        curve.append({"covis_window_ms": window, "recent_half_life_ms": half,
                      "val_recall@20": round(r, 6), "n": int(len(g))})
        say(f"covis window {window / HOUR_MS:g} h, recency {half / HOUR_MS:g} h: val "
            f"Recall@20 {r:.4f} (n {len(g)})")
        if best is None or r > best[0]:
            best = (r, i)
    assert best is not None
    sp, hp = settings[best[1]]
    return sp, hp, curve


# ------------------------------------------------------------------------------ hybrid

def _variant(cands: Candidates, name: str) -> tuple[np.ndarray, list[int]]:
    """(row mask, feature columns) of an ablation variant of the full candidates: the rows
    some remaining source produced, the remaining features (exactly what ``generate`` with
    the source off gives, minus the dropped columns)."""
    if name == "hybrid":
        return np.ones(len(cands), dtype=bool), list(range(len(FEATURES)))
    drop_src, drop_feat = ABLATIONS[name]
    mask = np.ones(len(cands), dtype=bool)
    if drop_src:
        bits = sum(1 << SOURCES.index(s) for s in drop_src)
        mask = (cands.sources & ~np.uint8(bits)) != 0
    cols = [i for i, f in enumerate(FEATURES) if f not in drop_feat]
    return mask, cols


def variant_features(name: str) -> tuple[str, ...]:
    if name == "hybrid":
        return FEATURES
    return tuple(f for f in FEATURES if f not in ABLATIONS[name][1])


def sample_queries(q: Queries, max_queries: int | None, seed: int,
                   keep: np.ndarray | None = None) -> Queries:
    """At most ``max_queries`` queries (seeded sample): every query with ``keep`` set, then
    a sample of the others."""
    if max_queries is None or len(q) <= max_queries:
        return q
    must = np.zeros(len(q), dtype=bool) if keep is None else keep.copy()
    rest = np.flatnonzero(~must)
    n = max(0, max_queries - int(must.sum()))
    must[np.random.default_rng(seed).choice(rest, min(n, len(rest)), replace=False)] = True
    return q.select(must)


def _hidden_target(ctx: Any) -> np.ndarray:
    """Validation queries whose targets include an item the run hides (the cold run's
    validation cold items): always kept, they are few and the only cold-item examples."""
    hidden = np.zeros(ctx.ev.n_items, dtype=bool)
    inv = ~ctx.vis.visible & ctx.ev.is_item
    hidden[ctx.ev.row[inv]] = True
    return np.array([bool(hidden[t].any()) for t in ctx.val.new], dtype=bool)


def collect(ev: EvalLog, vis: Visibility, q: Queries, vectors: dict[str, np.ndarray],
            params: Any, gs: GenSettings, variants: Mapping[str, Sequence[str]]
            ) -> dict[tuple[str, str], CandidateSet]:
    """Replay ``q`` and keep every query's candidates: ``variants[protocol]`` = the variants
    wanted for that protocol."""
    st = StreamState(ev, vis, windows_days=(), profiles=vectors, profile_params=params)
    collab = Collab(ev, gs.signal, params)
    st.listeners.append(collab)
    if gs.content_hits is not None:
        gs.content_hits.attach(st)
    acc: dict[tuple[str, str], dict[str, list[Any]]] = {
        (p, v): {"x": [], "y": [], "q": [], "u": [], "nt": [], "nr": [], "src": []}
        for p, vs in variants.items() for v in vs}
    for idx in steps(q):
        step = step_of(ev, vis, q, idx)
        st.advance(step.t)
        for r, qi in enumerate(idx.tolist()):
            for p, vs in variants.items():
                targets = q.new[qi] if p == "new" else q.targets[qi]
                if len(targets) == 0:
                    continue
                c = candidates(ev, st, collab, step, r, p, gs.hybrid, gs.vectors, gs.sequence,
                               gs.content_hits)
                tset = {ev.item_ids[t] for t in targets.tolist()}
                y_all = np.fromiter((it in tset for it in c.items), dtype=np.int8,
                                    count=len(c))
                n_rank = ev.n_items - (len(step.hist_items[r]) if p == "new" else 0)
                for v in vs:
                    mask, cols = _variant(c, v)
                    a = acc[(p, v)]
                    qn = len(a["u"])
                    a["x"].append(c.features[mask][:, cols])
                    a["y"].append(y_all[mask])
                    a["q"].append(np.full(int(mask.sum()), qn, dtype=np.int64))
                    a["src"].append(c.sources[mask])
                    a["u"].append(int(step.users[r]))
                    a["nt"].append(len(targets))
                    a["nr"].append(n_rank)
    out = {}
    for (p, v), a in acc.items():
        feats = variant_features(v)
        if not a["u"]:
            continue
        out[(p, v)] = CandidateSet(
            np.concatenate(a["x"]), np.concatenate(a["y"]), np.concatenate(a["q"]),
            np.array(a["u"], dtype=np.int64), np.array(a["nt"], dtype=np.int64),
            np.array(a["nr"], dtype=np.int64), feats, np.concatenate(a["src"]))
    return out


class HybridScorer:
    """The test replay's candidates: one ``generate`` per query and protocol, shared by the
    hybrid, its ablations (each its own ranker) and co-visitation alone (the covis source of
    the same candidates, by its score)."""

    def __init__(self, collab: Collab, gs: GenSettings) -> None:
        self.collab, self.gs = collab, gs
        self.rankers: dict[tuple[str, str], Ranker] = {}
        self._key: tuple[int, str] | None = None
        self._cands: list[Candidates] = []

    def candidates(self, st: StreamState, step: Step, p: str) -> list[Candidates]:
        key = (int(step.idx[0]), p)
        if self._key != key:
            self._cands = [candidates(st.ev, st, self.collab, step, r, p, self.gs.hybrid,
                                      self.gs.vectors, self.gs.sequence, self.gs.content_hits)
                           for r in range(len(step.idx))]
            self._key = key
        return self._cands

    def method(self, name: str, protocols: tuple[str, ...], variant: str | None = None
               ) -> Method:
        """The ranked candidates of ``variant`` (default: ``name``) as method ``name``, with
        the ranker ``rankers[(protocol, name)]``."""
        variant = variant or name

        def score(st: StreamState, step: Step, p: str) -> np.ndarray:
            ranker = self.rankers[(p, name)]
            out = np.empty((len(step.idx), st.ev.n_items))
            hp = self.gs.hybrid if variant != "hybrid-fresh" else replace(self.gs.hybrid,
                                                                             fresh_every=0)
            for r, c in enumerate(self.candidates(st, step, p)):
                mask, cols = _variant(c, variant)
                vals = ranker.predict(c.features[mask][:, cols]) if mask.any() else np.zeros(0)
                if mask.any():  # the freshness rule, as the worker serves
                    sub = Candidates([it for it, m in zip(c.items, mask) if m], c.features[mask],
                                     c.sources[mask])
                    vals = serve_scores(sub, vals, hp)
                out[r] = _scores(st.ev, c, vals, mask)
            return out

        return Method(name, score, protocols=protocols, per_protocol=True)

    def covis(self) -> Method:
        col = FEATURES.index("covis_score")

        def score(st: StreamState, step: Step, p: str) -> np.ndarray:
            out = np.empty((len(step.idx), st.ev.n_items))
            for r, c in enumerate(self.candidates(st, step, p)):
                mask = c.from_source("covis")
                out[r] = _scores(st.ev, c, c.features[mask, col], mask)
            return out

        return Method("covis", score, per_protocol=True)


def fit_hybrid(cs: dict[tuple[str, str], CandidateSet], seed: int, chosen: tuple[str, Any] | None,
               say: Callable[[str], None] = lambda s: None
               ) -> tuple[dict[tuple[str, str], Ranker], dict]:
    """The ranker configuration: ``chosen`` (kind, setting) or, when None, chosen on the full
    hybrid's new-items validation candidates (``choose_ranker``); then fitted for every
    (protocol, variant)."""
    from stream.eval.rankers import _subsample

    rankers: dict[tuple[str, str], Ranker] = {}
    info: dict[str, Any] = {}
    if chosen is None:
        choice = choose_ranker(cs[("new", "hybrid")], seed=seed)
        say("hybrid ranker: " + "; ".join(
            f"{r['kind']} {r['setting']}: R@20 {r['val_recall@20']:.4f} logloss "
            f"{r['val_logloss']:.4f} AUC {r['val_auc']:.4f}" for r in choice.report)
            + f" -> {choice.kind} {choice.setting}")
        chosen = (choice.kind, choice.setting)
        rankers[("new", "hybrid")] = choice.ranker
        info["validation"] = choice.report
    kind, setting = chosen
    for key, c in cs.items():
        if key in rankers:
            continue
        sub = _subsample(c, 50, seed)
        if c.y[sub].sum() == 0 or c.y[sub].sum() == sub.sum():
            continue
        rankers[key] = fit_one(kind, setting, c.x[sub], c.y[sub], c.features, seed)
    info.update(chosen={"kind": kind, "setting": setting},
                positives={f"{p}/{v}": int(c.y.sum()) for (p, v), c in cs.items()},
                rows={f"{p}/{v}": int(len(c.y)) for (p, v), c in cs.items()},
                queries={f"{p}/{v}": int(c.n_queries) for (p, v), c in cs.items()})
    return rankers, info


# ------------------------------------------------------------------------------ builders

def builders() -> dict[str, Callable[[Any], tuple[Method | None, dict]]]:
    """Method builders for ``stream.eval.run.EvalConfig.extra``: covis, sasrec, hybrid."""
    return {"covis": build_covis, "sasrec": build_sasrec, "hybrid": build_hybrid}


def _covis_settings(ctx: Any) -> tuple[SignalParams, HybridParams]:
    """Chosen on the first run's validation queries, reused by the later (cold) run."""
    memo = ctx.config.memo
    if "covis_settings" not in memo:
        sp, hp, curve = tune_covis(ctx.ev, ctx.vis, ctx.val, ctx.params,
                                   max_queries=ctx.config.tune_queries, seed=ctx.config.seed,
                                   say=ctx.say)
        memo["covis_settings"] = (sp, hp)
        memo["covis_curve"] = curve
    settings: tuple[SignalParams, HybridParams] = memo["covis_settings"]
    return settings


def _scorer(ctx: Any) -> HybridScorer:
    """The run's test-replay candidates (one per run), its signals hooked to the state."""
    if "scorer" not in ctx.shared:
        sp, hp = _covis_settings(ctx)
        collab = Collab(ctx.ev, sp, ctx.params)
        ctx.state_hooks.append(lambda state: state.listeners.append(collab))
        vec = "finetuned" if "finetuned" in ctx.vectors else (
            "untuned" if "untuned" in ctx.vectors else None)
        fresh = getattr(ctx.config, "fresh_every", None)
        if fresh is not None:
            hp = replace(hp, fresh_every=int(fresh))
        ctx.shared["scorer"] = HybridScorer(collab, GenSettings(sp, hp, vec))
    scorer: HybridScorer = ctx.shared["scorer"]
    return scorer


def build_covis(ctx: Any) -> tuple[Method | None, dict]:
    scorer = _scorer(ctx)
    sp, hp = scorer.gs.signal, scorer.gs.hybrid
    info = {"chosen": {"covis_window_ms": sp.covis_window_ms,
                       "recent_half_life_ms": hp.recent_half_life_ms,
                       "covis_k": hp.covis_k},
            "validation": ctx.config.memo.get("covis_curve", [])}
    return scorer.covis(), info


def build_hybrid(ctx: Any) -> tuple[Method | None, dict]:
    scorer = _scorer(ctx)
    gs = scorer.gs
    model = _sasrec_model(ctx)[0] if getattr(ctx.config, "hybrid_sequence", True) else None
    if model is not None:  # the sequence source: the run's SASRec (the baseline's own model)
        from encoder.sequence import SequenceModel

        gs.sequence = SequenceModel(model, ctx.ev.item_ids[: ctx.ev.n_items])
    wanted = ctx.config.ablations if ctx.name == "main" else ctx.config.cold_ablations
    ablations = [a for a in ABLATIONS if a in wanted]
    # hybrid-fresh is the hybrid's own ranker without the freshness rule: nothing to collect
    variants = {"new": ["hybrid", *(a for a in ablations if a != "hybrid-fresh")],
                "all": ["hybrid"]}
    val = sample_queries(ctx.val, ctx.config.hybrid_val_queries, ctx.config.seed,
                         keep=_hidden_target(ctx))
    cs = collect(ctx.ev, ctx.vis, val, ctx.vectors, ctx.params, gs, variants)
    if ("new", "hybrid") not in cs:
        return None, {"left_out": "no validation query with a new-item target"}
    ctx.say(f"hybrid: candidates of {len(val)} validation queries "
            f"({len(cs[('new', 'hybrid')].y)} rows, {int(cs[('new', 'hybrid')].y.sum())} "
            "positives)")
    rankers, info = fit_hybrid(cs, ctx.config.seed, ctx.config.memo.get("ranker_choice"),
                               ctx.say)
    ctx.config.memo["ranker_choice"] = (info["chosen"]["kind"], info["chosen"]["setting"])
    if "hybrid-fresh" in ablations:
        rankers[("new", "hybrid-fresh")] = rankers[("new", "hybrid")]
    scorer.rankers.update(rankers)
    ctx.shared.setdefault("extra_methods", []).extend(
        scorer.method(v, ("new",)) for v in ablations if ("new", v) in rankers)
    info.update(encoder=gs.vectors, validation_queries=len(val),
                params={"hybrid": _plain(gs.hybrid), "signals": _plain(gs.signal)})
    if ("all", "hybrid") not in rankers:  # no all-items validation positive: reuse new's
        rankers[("all", "hybrid")] = rankers[("new", "hybrid")]
        scorer.rankers[("all", "hybrid")] = rankers[("new", "hybrid")]
    return scorer.method("hybrid", ("new", "all")), info


def _plain(obj: Any) -> dict:
    from dataclasses import asdict

    d = asdict(obj)
    return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v)
            for k, v in d.items()}


# ------------------------------------------------------------------------------ SASRec

def build_sasrec(ctx: Any) -> tuple[Method | None, dict]:
    model, info = _sasrec_model(ctx)
    if model is None:
        return None, info

    def score(st: StreamState, step: Step, p: str) -> np.ndarray:
        hs = [h[st.ev.is_item[h]] for h in step.history]
        out: np.ndarray = model.score([st.ev.row[h] for h in hs],
                                      [st.ev.ts[h] for h in hs]).astype(np.float64)
        return out

    return Method("sasrec", score), info


def _sasrec_model(ctx: Any) -> tuple[Any, dict]:
    """The run's SASRec (trained once per run, shared by the baseline and the hybrid's
    sequence source): (model or None, tuning info)."""
    if "sasrec" not in ctx.shared:
        ctx.shared["sasrec"] = _fit_sasrec(ctx)
    out: tuple[Any, dict] = ctx.shared["sasrec"]
    return out


def _fit_sasrec(ctx: Any) -> tuple[Any, dict]:
    cfg = getattr(ctx.config, "sasrec", None)
    budget = getattr(ctx.config, "sasrec_seconds", None)
    if budget is not None:  # the cold run gets half: it only has to be as good on fewer cases
        budget = float(budget) * (1.0 if ctx.name == "main" else 0.5)
    return fit_sequence(ctx.ev, ctx.vis, ctx.val, ctx.config.seed, budget, cfg,
                        int(getattr(ctx.config, "sasrec_val_cases", 3000)), ctx.say)


def fit_sequence(ev: EvalLog, vis: Visibility, val: Queries, seed: int,
                 max_seconds: float | None, cfg: Any = None, val_cases: int = 3000,
                 say: Callable[[str], None] = lambda s: None) -> tuple[Any, dict]:
    """SASRec on the training part (each user's trainable item events, ties as tie groups),
    early-stopped on at most ``val_cases`` sampled validation cases (new items, history
    excluded): (model, its training record), or (None, why) without torch."""
    try:
        from encoder import sasrec
    except ImportError as exc:  # torch missing
        return None, {"left_out": f"cannot import encoder.sasrec: {exc}"}
    seqs, ties = [], []
    for u in range(len(ev.users)):
        pos = ev.by_user[u]
        pos = pos[vis.trainable[pos] & ev.is_item[pos]]
        seqs.append(ev.row[pos])
        ties.append(ev.ts[pos])
    from stream.eval.baselines import histories

    hist = histories(ev, vis, val)
    cases = []
    for i, h in enumerate(hist):
        h = h[ev.is_item[h]]
        for t in val.new[i].tolist():
            cases.append((ev.row[h], t, ev.ts[h]))
    # lr 2e-3: validates as well as 1e-3 (mean of two seeds 0.2629 vs 0.2630 on MovieLens) and
    # peaks at epoch ~28 instead of ~39, so early stopping ends inside the time budget: a
    # baseline cut short by the budget would be a weak one (encoder/sasrec.py, README)
    cfg = cfg or sasrec.SasrecConfig(seed=seed, lr=2e-3)
    if max_seconds is not None:
        cfg = replace(cfg, max_seconds=float(max_seconds))
    rng = np.random.default_rng(seed)
    if len(cases) > val_cases:
        pick = np.sort(rng.choice(len(cases), val_cases, replace=False))
        cases = [cases[i] for i in pick.tolist()]
    model = sasrec.fit_sasrec(seqs, cases, ev.n_items, cfg, tie_groups=ties)
    say(f"sasrec: best epoch {model.best_epoch}, val Recall@20 {model.best_val_recall}, "
        f"{model.train_seconds:.0f}s ({model.stopped})")
    return model, {**model.describe(), "val_cases": len(cases)}


# ------------------------------------------------------------------- serving == evaluation

def ranked_lists(ev: EvalLog, vectors: dict[str, np.ndarray], params: Any, gs: GenSettings,
                 ranker: Ranker, users: Sequence[str], cutoff_ts: int, k: int,
                 exclude_history: bool = False) -> dict[str, list[tuple[str, float]]]:
    """What the evaluator ranks for ``users`` once every event with ``ts <= cutoff_ts`` has
    been applied: ``generate`` + ``ranker.predict`` + ``stream.core.hybrid.rank`` (score
    descending, ties by item id), the top ``k``.  ``exclude_history`` off: only purchased items
    are excluded (what the worker's ``/candidates`` does); on: the new-items protocol.  For the
    integration test that compares the worker's lists with the evaluator's."""
    from stream.core.hybrid import rank

    vis = Visibility.full(ev)
    st = StreamState(ev, vis, windows_days=(), profiles=vectors, profile_params=params)
    collab = Collab(ev, gs.signal, params)
    st.listeners.append(collab)
    if gs.content_hits is not None:
        gs.content_hits.attach(st)
    st.advance(cutoff_ts + 1)
    index = {u: i for i, u in enumerate(ev.users)}
    idx = np.arange(len(users))
    uidx = np.array([index.get(u, -1) for u in users], dtype=np.int64)
    hist = [user_history(ev, vis, int(u), cutoff_ts + 1) if u >= 0 else np.zeros(0, np.int64)
            for u in uidx.tolist()]
    items = [np.unique(ev.row[h[ev.is_item[h]]]) if exclude_history else np.zeros(0, np.int64)
             for h in hist]
    step = Step(idx, uidx, cutoff_ts + 1, hist, items)
    out: dict[str, list[tuple[str, float]]] = {}
    for r, user in enumerate(users):
        if uidx[r] < 0:
            continue
        c = candidates(ev, st, collab, step, r, "new", gs.hybrid, gs.vectors, gs.sequence,
                       gs.content_hits)
        out[user] = rank(c, serve_scores(c, ranker.score(c.features, FEATURES), gs.hybrid),
                         k) if len(c) else []
    return out
