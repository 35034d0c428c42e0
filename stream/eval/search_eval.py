"""``profiles eval-search``: does personalised search find more of a user's interests than plain
query relevance, at equal query relevance?  Measured on generated data, where every user's true
interest categories are known (``stream.data.generate``).

Protocol (one seeded run):

1. ``generate(users, items, events, seed)``; items are encoded as the worker encodes them
   (``Item.text()``: title | category | brand) and every user's profile is the worker's profile
   formula (``stream.core.profile.ProfileTable``, ``PROFILES_HALF_LIFE_MS`` and event weights)
   over the whole log, search events included (their query's vector); the multi-interest
   profile (``stream.core.interests``, ``PROFILES_INTERESTS_K`` / ``_THRESHOLD``) is built
   from the same events.
2. Queries: :data:`QUERIES`, short queries that do not name a category (a colour, a material,
   "lightweight", "for kids"), so relevance alone cannot know what this shopper wants.
3. For each (user, query): the ``pool`` items most relevant to the query (cosine), then the top
   ``k`` by :func:`stream.core.search.rank`, the serving code, at blend weight λ (λ = 0: plain
   query relevance), the user's side being the profile vector or the interests
   (:func:`stream.core.search.interest_rows`), as the worker has them.  Per case: ``interest@k``, the share of the top ``k`` whose category is one
   of the user's true interests, and ``relevance@k``, their mean query relevance.
4. *Equal query relevance*: both rankings choose from the same pool, and the blend weight is the
   largest of :data:`GRID` whose mean ``relevance@k`` is within ``tolerance`` (cosine) of plain
   relevance's (per variant), chosen on the tuning half of the users (even positions) and reported on the
   other half, so the choice does not flatter the result.  The serving default
   (``PROFILES_SEARCH_BLEND``) is reported on the same held-out half.
5. Paired bootstrap over users (``encoder.training.evaluate.bootstrap``): 95 % CIs of every
   method's means and of the differences against plain relevance.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from encoder import HashingEncoder, load_encoder
from encoder.base import Encoder
from encoder.training.evaluate import bootstrap
from stream.core.events import Item
from stream.core.interests import InterestParams, InterestTable
from stream.core.profile import ProfileParams, ProfileTable
from stream.core.search import affinity, interest_rows, rank
from stream.data.generate import generate
from stream.settings import Settings

__all__ = ["GRID", "QUERIES", "VARIANTS", "SearchEvalConfig", "evaluate", "format_table", "interest_share",
           "run_cli"]

#: queries that name no category: what they match depends on the shopper
QUERIES: tuple[str, ...] = (
    "black", "white", "red", "blue", "grey", "green", "recycled polyester", "ripstop nylon",
    "aluminium", "stainless steel", "lightweight", "waterproof", "for kids", "compact",
    "gift idea", "something durable",
)
#: the user's side of the blend: the single profile vector, or the multi-interest profile's
#: interests (``stream.core.interests``, the worker's parameters)
VARIANTS: tuple[str, ...] = ("profile", "interests")
#: blend weights tried on the tuning half
GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


@dataclass(frozen=True)
class SearchEvalConfig:
    users: int = 400
    items: int = 2000
    events: int = 20_000
    seed: int = 11
    k: int = 10
    pool: int = 200
    tolerance: float = 0.01
    default_blend: float = 0.1
    n_boot: int = 1000
    encoder: str = "transformer"
    device: str = "auto"


def interest_share(categories: list[str | None], interests: set[str]) -> float:
    """Share of ``categories`` (a served top k) that are among ``interests``."""
    return sum(c in interests for c in categories) / len(categories) if categories else 0.0


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = (x / np.where(n > 0, n, 1.0)).astype(np.float32)
    return out


def _encode(enc: Encoder, texts: list[str], batch: int = 256) -> np.ndarray:
    return _unit(np.concatenate([enc.encode(texts[i:i + batch])
                                 for i in range(0, len(texts), batch)]))


def evaluate(cfg: SearchEvalConfig, enc: Encoder, pp: ProfileParams | None = None,
             ip: InterestParams | None = None, log: Any = None) -> dict[str, Any]:
    """The measurement of the module docstring, as a JSON-ready dict; ``ip``: the interests'
    parameters (default: ``InterestParams`` with the profile's half-life)."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if log is not None:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=log, flush=True)

    pp = pp or ProfileParams()
    ds = generate(cfg.users, cfg.items, cfg.events, cfg.seed)
    items = [Item(r["item_id"], r["title"], r.get("category"), r.get("brand"), r.get("price"))
             for r in ds.items]
    ids = [it.item_id for it in items]
    cat = np.array([it.category for it in items], dtype=object)
    say(f"encoding {len(items)} items")
    ivec = _encode(enc, [it.text() for it in items])
    at = {i: n for n, i in enumerate(ids)}
    searches = sorted({e["query"] for e in ds.events if e["type"] == "search"})
    qvec = dict(zip(searches, _encode(enc, searches))) if searches else {}
    table = ProfileTable(ivec.shape[1], pp)
    ev = ds.events
    vecs = np.stack([qvec[e["query"]] if e["type"] == "search" else ivec[at[e["item_id"]]]
                     for e in ev])
    table.apply([e["user_id"] for e in ev], np.array([e["ts"] for e in ev], dtype=np.int64),
                pp.weight_array([e["type"] for e in ev]), vecs)
    users = sorted(table.users())
    ip = ip or InterestParams(half_life_ms=pp.half_life_ms)
    interests = InterestTable(ivec.shape[1], ip)
    interests.apply([e["user_id"] for e in ev], np.array([e["ts"] for e in ev], dtype=np.int64),
                    pp.weight_array([e["type"] for e in ev]), vecs)
    say(f"{len(users)} profiles; encoding {len(QUERIES)} queries")
    queries = _encode(enc, list(QUERIES))
    rel_all = queries @ ivec.T  # [Q, I]
    pool_n = min(cfg.pool, len(ids))
    pools = np.argsort(-rel_all, axis=1, kind="stable")[:, :pool_n]
    blends = sorted(set(GRID) | {cfg.default_blend})
    keys = [(v, b) for v in VARIANTS for b in blends]
    interest: dict[tuple[str, float], list[float]] = {key: [] for key in keys}
    relevance: dict[tuple[str, float], list[float]] = {key: [] for key in keys}
    case_user: list[int] = []
    for u_i, user in enumerate(users):
        prof = table.vector(user)
        found = interests.get(user)
        assert prof is not None and found is not None  # every user here has events
        rows = {"profile": prof[None, :], "interests": interest_rows(found.vectors, found.shares)}
        truth = set(ds.interests[user])
        for q_i in range(len(QUERIES)):
            pool = pools[q_i]
            pids = [ids[j] for j in pool]
            rel = rel_all[q_i, pool].astype(np.float64)
            for v in VARIANTS:
                aff = affinity(ivec[pool], rows[v])
                for b in blends:
                    hits = rank(pids, rel, aff if b > 0 else None, b, cfg.k)
                    interest[v, b].append(
                        interest_share([cat[at[h.item_id]] for h in hits], truth))
                    relevance[v, b].append(float(np.mean([h.relevance for h in hits])))
            case_user.append(u_i)
    say(f"{len(case_user)} cases ranked")
    cu = np.array(case_user)
    tune = cu % 2 == 0
    test = ~tune

    def mean(d: dict[tuple[str, float], list[float]], key: tuple[str, float],
             half: np.ndarray) -> float:
        return float(np.mean(np.array(d[key])[half]))

    plain_rel = mean(relevance, ("profile", 0.0), tune)
    chosen = {v: max(b for b in GRID if plain_rel - mean(relevance, (v, b), tune)
                     <= cfg.tolerance) for v in VARIANTS}
    methods: dict[str, tuple[str, float]] = {"plain": ("profile", 0.0)}
    for v in VARIANTS:
        methods[f"{v} blend {chosen[v]:g} (equal relevance)"] = (v, chosen[v])
    for v in VARIANTS:
        if cfg.default_blend != chosen[v]:
            methods[f"{v} blend {cfg.default_blend:g} (serving default)"] = (v, cfg.default_blend)

    def per_case(key: tuple[str, float]) -> dict[str, np.ndarray]:
        return {"interest@k": np.array(interest[key])[test],
                "relevance@k": np.array(relevance[key])[test]}

    report = bootstrap({m: per_case(key) for m, key in methods.items()}, cu[test], cfg.n_boot,
                       cfg.seed, pairs=[(m, "plain") for m in methods if m != "plain"])
    tuning = {f"{v} {b:g}": {"interest@k": mean(interest, (v, b), tune),
                             "relevance@k": mean(relevance, (v, b), tune)} for v, b in keys}
    sizes = np.bincount([len(interests.get(u) or ()) for u in users])
    return {"config": cfg.__dict__, "interests": {"k": ip.k, "threshold": ip.threshold},
            "encoder": getattr(enc, "name", type(enc).__name__),
            "queries": list(QUERIES), "chosen_blend": chosen, "tuning_half": tuning,
            "interests_per_user": sizes.tolist(), "held_out": report,
            "seconds": round(time.perf_counter() - t0, 1)}


def format_table(res: dict[str, Any]) -> str:
    """The held-out half as a markdown table (means with 95 % CIs, differences vs plain)."""
    k = res["config"]["k"]
    rep = res["held_out"]
    lines = [f"held-out users {rep['users']}, cases {rep['cases']}, encoder {res['encoder']}, "
             f"k {k}, pool {res['config']['pool']}, equal relevance = within "
             f"{res['config']['tolerance']:g} cosine (blend chosen on the tuning half)", "",
             f"| method | interest@{k} | relevance@{k} | Δ interest@{k} vs plain | "
             f"Δ relevance@{k} vs plain |", "|---|---|---|---|---|"]

    def fmt(d: dict[str, Any]) -> str:
        lo, hi = d["ci95"]
        return f"{d['mean']:.4f} [{lo:.4f}, {hi:.4f}]"

    for m, d in rep["methods"].items():
        diff = rep["differences"].get(f"{m} - plain")
        lines.append(f"| {m} | {fmt(d['interest@k'])} | {fmt(d['relevance@k'])} | "
                     f"{fmt(diff['interest@k']) if diff else '—'} | "
                     f"{fmt(diff['relevance@k']) if diff else '—'} |")
    return "\n".join(lines)


def run_cli(args: Any, settings: Settings) -> int:
    """``profiles eval-search``: the blend and pool are the settings' (``PROFILES_SEARCH_*``)."""
    cfg = SearchEvalConfig(users=args.users, items=args.items, events=args.events,
                           seed=args.seed, k=args.k, pool=settings.search_pool,
                           tolerance=args.tolerance, default_blend=settings.search_blend,
                           n_boot=args.bootstrap, encoder=args.encoder, device=args.device)
    enc: Encoder = (HashingEncoder() if cfg.encoder == "hashing"
                    else load_encoder(None, device=cfg.device))
    res = evaluate(cfg, enc, settings.profile_params(), settings.interest_params(),
                   log=sys.stderr)
    if args.json:
        sys.stdout.write(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_table(res))
    return 0
