"""``profiles eval --interests``: the single profile vector against multi-interest profiles
(issue 13) at the same total K, on their own and inside the hybrid, with diversity.

Interests (``stream.core.interests.InterestTable``, the worker's table) are applied in the
replay with exactly the events, weights and vectors the profile gets (every visible event with
weight > 0, query events included), in the evaluator's canonical order (ts, user, item id,
type): never the order of event ids, which ties would otherwise leak.  Rows added (new-items
protocol: history excluded):

- ``content_single``: the content source on its own, the single profile's exact top
  ``SERVED_K`` (20) items by ``profile . item``; the other items are not candidates;
- ``content_multi``: the worker's rule (``stream.core.interests.multi_interest_hits``, the
  function ``stream.serve.interests.content_hits`` calls): the same K split over the user's
  interests by importance (largest remainder); interests in descending importance each take
  their ``q_i`` most similar items (``interest . item``, exact) that a more important one did
  not take, so K distinct items; ranked by the similarity to the interest that took the item.
  A user with at most one interest gets the single path, as in the worker;
- ``hybrid_multi``: the hybrid whose content source is that multi-interest rule over its own
  ``content_k`` (``hybrid`` uses the single profile's top ``content_k``); the content hit's
  feature ``content_sim`` stays ``profile . item`` so the feature means the same for every
  candidate; its ranker is refitted on its own validation candidates with the configuration
  the hybrid chose (``fit_hybrid``).

Diversity: the expected intra-list diversity of each method's served top 20 (mean pairwise
``1 - cos`` of the untuned encoder's item vectors, ties unordered: ``stream.eval.diversity``),
per query.  The report (``out["interests"]["main"]``) has, per method, Recall@20 / NDCG@20 /
ILD@20 with 95 % CIs (paired bootstrap over users) and the paired differences
``content_multi - content_single`` and ``hybrid_multi - hybrid``; the mean number of interests
per scored user; and the cost per event of the interest update against the profile update,
timed side by side on the replay's own batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from encoder.training.evaluate import bootstrap
from stream.core.interests import InterestParams, InterestTable, multi_interest_hits
from stream.core.profile import ProfileParams, ProfileTable
from stream.eval.diversity import expected_ild, unit_rows
from stream.eval.metrics import expected_metrics, quantise
from stream.eval.replay import Method, Result, Step, StreamState

SERVED_K = 20
NAMES = ("content_single", "content_multi", "hybrid_multi")
PAIRS = (("content_multi", "content_single"), ("hybrid_multi", "hybrid"))
DIVERSITY_OF = ("content_single", "content_multi", "hybrid", "hybrid_multi")
_KEY = "interests"


class InterestReplay:
    """An ``InterestTable`` advanced with a ``StreamState`` (a listener): the profile's
    events (visible, weight > 0) in canonical order; optionally times ``apply`` against a
    shadow ``ProfileTable.apply`` of the same batch (the cost per event)."""

    def __init__(self, st: StreamState, vec_name: str, ip: InterestParams,
                 timed: bool = False) -> None:
        self.ev = st.ev
        self.vectors = st.vectors[vec_name]
        self.weights = st.params.weight_array(st.ev.types)
        self.table = InterestTable(self.vectors.shape[1], ip, capacity=max(1, len(st.ev.users)))
        self.shadow = ProfileTable(self.vectors.shape[1], st.params,
                                   capacity=max(1, len(st.ev.users))) if timed else None
        self.events = 0
        self.seconds = {"interests": 0.0, "profile": 0.0}

    def __call__(self, pos: np.ndarray) -> None:
        w = self.weights[pos]
        keep = pos[w > 0]
        if len(keep) == 0:
            return
        ev = self.ev
        users = [ev.users[u] for u in ev.user[keep].tolist()]
        args = (users, ev.ts[keep], self.weights[keep], self.vectors[ev.row[keep]])
        t0 = time.perf_counter()
        self.table.apply(*args)
        t1 = time.perf_counter()
        if self.shadow is not None:
            self.shadow.apply(*args)
            self.seconds["profile"] += time.perf_counter() - t1
        self.seconds["interests"] += t1 - t0
        self.events += len(keep)


def _top(sims: np.ndarray, masked_out: np.ndarray, id_rank: np.ndarray, k: int) -> np.ndarray:
    """Rows of the exact top ``k`` of ``sims`` outside ``masked_out`` (equal: by item id)."""
    s = np.where(masked_out, -np.inf, sims.astype(np.float64))
    k = min(k, int((~masked_out).sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top: np.ndarray = np.lexsort((id_rank, -s))[:k]
    return top


class MultiContent:
    """The multi-interest content rule (module docstring) over one state's ``InterestReplay``
    (``GenSettings.content_hits`` of ``hybrid_multi``; also ``content_multi``)."""

    def __init__(self, ip: InterestParams, timed: bool = False) -> None:
        self.ip, self.timed = ip, timed

    def attach(self, st: StreamState) -> InterestReplay:
        """The state's interests (created and hooked once per state), from the encoder the
        content source uses (fine-tuned when given, else untuned)."""
        if _KEY not in st.extras:
            rep = InterestReplay(st, vector_name(st.vectors), self.ip, timed=self.timed)
            st.extras[_KEY] = rep
            st.listeners.append(rep)
        out: InterestReplay = st.extras[_KEY]
        return out

    def rows(self, st: StreamState, user: int, masked_out: np.ndarray, k: int,
             profile_sims: np.ndarray) -> list[tuple[int, float]]:
        """(row, similarity) of the served content hits: ``multi_interest_hits`` over an
        exact search (similarity to the interest that took the item), or the single profile's
        top ``k`` for a user with at most one interest."""
        ev = st.ev
        rep: InterestReplay = st.extras[_KEY]
        name = ev.users[user]
        if rep.table.count(name) <= 1:
            top = _top(profile_sims, masked_out, ev.id_rank, k)
            return [(int(r), float(profile_sims[r])) for r in top.tolist()]
        it = rep.table.get(name)
        assert it is not None
        items = rep.vectors[: ev.n_items]

        def search(queries: np.ndarray, kk: int) -> list[list[tuple[str, float]]]:
            """The exact index's answer: each row's best ``kk`` (equal: by item id)."""
            out = []
            for vec in queries:
                sims = items @ vec  # float32, as the exact index
                out.append([(ev.item_ids[r], float(sims[r]))
                            for r in _top(sims, masked_out, ev.id_rank, kk).tolist()])
            return out

        row_of = ev.row_of
        return [(row_of[i], s) for i, s in multi_interest_hits(it, k, search)]

    def hits(self, st: StreamState, user: int, masked: np.ndarray, sims: np.ndarray,
             k: int) -> list[tuple[str, float]]:
        """``hybrid_eval.candidates``'s content hits: (item id, profile . item)."""
        rows = self.rows(st, user, ~np.isfinite(masked), k, sims)
        return [(st.ev.item_ids[r], float(sims[r])) for r, _ in rows]


def vector_name(vectors: dict[str, np.ndarray]) -> str:
    """The encoder whose profiles feed the content source (as ``hybrid_eval._scorer``)."""
    return "finetuned" if "finetuned" in vectors else "untuned"


def content_method(name: str, vec_name: str, multi: MultiContent | None,
                   k: int = SERVED_K) -> Method:
    """The content source on its own: its served top ``k`` ranked by similarity (the
    merged interests' best similarity for ``content_multi``); other items not candidates."""

    def score(st: StreamState, step: Step, p: str) -> np.ndarray:
        ev = st.ev
        n = ev.n_items
        out = np.full((len(step.idx), n), -np.inf)
        items = st.vectors[vec_name][:n]
        for r, u in enumerate(step.users.tolist()):
            v = st.profile(vec_name, u)
            if v is None:
                continue
            sims = items @ v
            excl = np.zeros(n, dtype=bool)
            excl[step.hist_items[r]] = True
            if multi is None:
                top = _top(sims, excl, ev.id_rank, k)
                out[r, top] = sims[top]
            else:
                for row, s in multi.rows(st, u, excl, k, sims):
                    out[r, row] = s
        return out

    return Method(name, score, protocols=("new",))


class DiversityProbe:
    """Wraps methods to record each query's expected ILD@20 (new items, history excluded)."""

    def __init__(self, names: tuple[str, ...] = DIVERSITY_OF, top: int = SERVED_K) -> None:
        self.names, self.top = names, top
        self.ild: dict[str, dict[int, float]] = {}
        self.length: dict[str, dict[int, float]] = {}

    def wrap(self, ctx: Any, m: Method) -> Method:
        if m.name not in self.names:
            return m
        emb = unit_rows(ctx.vectors["untuned"][: ctx.ev.n_items])
        ild = self.ild.setdefault(m.name, {})
        length = self.length.setdefault(m.name, {})
        inner = m.score

        def score(st: StreamState, step: Step, p: str) -> np.ndarray:
            s = inner(st, step, p)
            if p == "new":
                qs = quantise(s)
                for r, qi in enumerate(step.idx.tolist()):
                    excl = np.zeros(st.ev.n_items, dtype=bool)
                    excl[step.hist_items[r]] = True
                    ild[qi] = expected_ild(qs[r], emb, excl, self.top)
                    length[qi] = float(min(self.top, int((np.isfinite(qs[r]) & ~excl).sum())))
            return s

        return replace(m, score=score)


def _ci(d: dict) -> dict:
    return {"mean": round(d["mean"], 6), "ci95": [round(x, 6) for x in d["ci95"]]}


def report(probe: DiversityProbe, n_boot: int, seed: int
           ) -> Callable[[str, Any, Result, Any], dict]:
    """The run's ``interests`` section (module docstring)."""

    def rep(name: str, ctx: Any, res: Result, q: Any) -> dict:
        qi = res.case_query("new")
        methods = [m for m in (*NAMES, "hybrid") if m in res.g and "new" in res.g[m]]
        out: dict[str, Any] = {"served_k": SERVED_K, "methods": {}, "differences": {}}
        if len(qi) == 0 or not methods:
            return {"interests": out}
        per_case = {}
        for m in methods:
            g, e = res.counts(m, "new")
            met = expected_metrics(g, e)
            per_case[m] = {"recall@20": met["recall@20"], "ndcg@20": met["ndcg@20"]}
        pairs = [(a, b) for a, b in PAIRS if a in per_case and b in per_case]
        bc = bootstrap(per_case, q.user[qi], n_boot=n_boot, seed=seed, pairs=pairs)
        queries = np.unique(qi)  # queries with a new-item target: the scored ones
        per_query = {}
        for m in methods:
            got = probe.ild.get(m, {})
            if all(int(i) in got for i in queries.tolist()):
                vals = np.array([got[int(i)] for i in queries.tolist()])
                lens = np.array([probe.length[m][int(i)] for i in queries.tolist()])
                ok = np.isfinite(vals)  # a list of < 2 items has no pair
                per_query[m] = {"ild@20": np.where(ok, vals, 0.0), "served": lens,
                                "has_pair": ok.astype(np.float64)}
        bq = bootstrap(per_query, q.user[queries], n_boot=n_boot, seed=seed,
                       pairs=[p for p in pairs if p[0] in per_query and p[1] in per_query]
                       ) if per_query else {"methods": {}, "differences": {}}
        for m in methods:
            d: dict[str, Any] = {k: _ci(v) for k, v in bc["methods"][m].items()}
            if m in bq["methods"]:
                d["ild@20"] = _ci(bq["methods"][m]["ild@20"])
                d["served_mean"] = round(bq["methods"][m]["served"]["mean"], 3)
                d["queries_without_pair"] = int(round(
                    (1 - bq["methods"][m]["has_pair"]["mean"]) * len(queries)))
            out["methods"][m] = d
        for a, b in pairs:
            key = f"{a} - {b}"
            d = {k: {**_ci(v), "excludes_0": v["excludes_0"]}
                 for k, v in bc["differences"][key].items()}
            if key in bq["differences"]:
                v = bq["differences"][key]["ild@20"]
                d["ild@20"] = {**_ci(v), "excludes_0": v["excludes_0"]}
            out["differences"][key] = d
        out["n"] = int(len(qi))
        out["queries"] = int(len(queries))
        out["users"] = int(bc["users"])
        timed = ctx.shared.get("interest_timing")
        if timed is not None:  # interests per scored user at the end of the replay
            counts = [timed.table.count(ctx.ev.users[u]) for u in np.unique(q.user[qi]).tolist()]
            out["interests_per_user"] = {
                "mean": round(float(np.mean(counts)), 3),
                "histogram": {str(c): int(n) for c, n in zip(*np.unique(counts,
                                                                         return_counts=True))}}
            t = timed.table  # what the interests of every user of the replay take in memory
            out["state_bytes_per_user"] = {
                "mean": round(t.nbytes_in_use() / max(len(t), 1), 1),
                "all_k": t.bytes_per_user,
                "how": "array bytes of the live rows and interest pool rows (int8 codes)"}
        if timed is not None and timed.events:
            us_i = 1e6 * timed.seconds["interests"] / timed.events
            us_p = 1e6 * timed.seconds["profile"] / timed.events
            out["cost_per_event"] = {
                "events": timed.events, "interests_us": round(us_i, 3),
                "profile_us": round(us_p, 3), "ratio": round(us_i / us_p, 3) if us_p else None,
                "how": "InterestTable.apply vs ProfileTable.apply on the same replay batches "
                       "(every event between two query times is one batch), side by side"}
        out["embeddings"] = "untuned encoder item vectors (the content source's), unit rows"
        out["interest_params"] = ctx.shared.get("interest_params", {})
        probe.ild.clear()
        probe.length.clear()
        return {"interests": out}

    return rep


def builders(ip: InterestParams) -> tuple[dict[str, Callable[[Any], tuple[Method | None, dict]]],
                                          MultiContent]:
    """``EvalConfig.extra`` builders of ``NAMES`` (after the hybrid's)."""
    multi = MultiContent(ip, timed=True)  # the test replay's (timed)

    def hook(ctx: Any) -> None:
        if "interest_hooked" not in ctx.shared:
            ctx.shared["interest_hooked"] = True
            ctx.shared["interest_params"] = {"k": ip.k, "threshold": ip.threshold,
                                             "half_life_ms": ip.half_life_ms,
                                             "encoder": vector_name(ctx.vectors)}

            def attach(st: StreamState) -> None:
                ctx.shared["interest_timing"] = multi.attach(st)

            ctx.state_hooks.append(attach)

    def single(ctx: Any) -> tuple[Method | None, dict]:
        return (content_method("content_single", vector_name(ctx.vectors), None),
                {"served_k": SERVED_K})

    def multi_only(ctx: Any) -> tuple[Method | None, dict]:
        hook(ctx)
        return (content_method("content_multi", vector_name(ctx.vectors), multi),
                {"served_k": SERVED_K})

    def hybrid_multi(ctx: Any) -> tuple[Method | None, dict]:
        from stream.eval.hybrid_eval import (
            HybridScorer,
            _hidden_target,
            collect,
            fit_hybrid,
            sample_queries,
        )

        base = ctx.shared.get("scorer")
        if base is None or ("new", "hybrid") not in base.rankers or base.gs.vectors is None:
            return None, {"left_out": "needs the hybrid and its content source"}
        hook(ctx)
        gs = replace(base.gs, content_hits=MultiContent(ip))  # validation replay: untimed
        scorer = HybridScorer(base.collab, replace(gs, content_hits=multi))
        val = sample_queries(ctx.val, ctx.config.hybrid_val_queries, ctx.config.seed,
                             keep=_hidden_target(ctx))
        cs = collect(ctx.ev, ctx.vis, val, ctx.vectors, ctx.params, gs, {"new": ["hybrid"]})
        if ("new", "hybrid") not in cs:
            return None, {"left_out": "no validation query with a new-item target"}
        rankers, info = fit_hybrid(cs, ctx.config.seed, ctx.config.memo.get("ranker_choice"),
                                   ctx.say)
        if ("new", "hybrid") not in rankers:
            return None, {"left_out": "no validation positive"}
        scorer.rankers[("new", "hybrid_multi")] = rankers[("new", "hybrid")]
        ctx.say(f"hybrid_multi: ranker {info['chosen']} refitted on {len(val)} validation "
                "queries")
        return scorer.method("hybrid_multi", ("new",), variant="hybrid"), info

    return ({"content_single": single, "content_multi": multi_only,
             "hybrid_multi": hybrid_multi}, multi)


def configure(config: Any, params: ProfileParams, k: int | None = None,
              threshold: float | None = None) -> None:
    """Add the ``--interests`` rows, the diversity probe and the report to an EvalConfig."""
    ip = InterestParams(k=k if k is not None else InterestParams.k,
                        threshold=threshold if threshold is not None else InterestParams.threshold,
                        half_life_ms=params.half_life_ms)
    b, _ = builders(ip)
    config.extra.update(b)
    config.methods = tuple(dict.fromkeys((*config.methods, *NAMES)))
    probe = DiversityProbe()
    config.wrappers.append(probe.wrap)
    config.reporters.append(report(probe, config.n_boot, config.seed))
