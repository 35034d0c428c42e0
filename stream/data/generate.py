"""Seeded synthetic e-commerce data: a catalogue, users with latent interests, and a time-ordered event log.

Everything is drawn from one ``numpy.random.Generator(seed)`` so the same arguments always give
byte-identical files. Users have 1-3 interest categories; ~85% of their item events hit those
categories and the rest are globally popular items, so a popularity baseline works but a
profile-based ranker should beat it.

**Repeat-purchase mode** (``repeat_frac > 0``, off by default; off gives byte-identical output to
earlier versions): a share ``repeat_frac`` of the events are purchases of *staples*, items each
user buys again every few days, mixed with the browsing above.  Every user has ``staples``
distinct staple items, drawn like their browsing (85 % from their interest categories by
within-category popularity, 15 % by global popularity; Gumbel top-k, without replacement).
Every item has a period, log-normal around ``staple_days`` (sigma ``STAPLE_PERIOD_SIGMA``); a
user's purchases of a staple form a renewal process: the first at a uniform phase in
``[0, period)``, then gaps ``period * Gamma(STAPLE_GAP_SHAPE) / STAPLE_GAP_SHAPE`` (mean = the
period, CV ~0.32).  The ``round(repeat_frac * events)`` earliest staple purchases are kept; the
time of the last one is the log's span, and the browsing events' timestamps (their usual
log-normal gaps) are scaled onto that span, so both kinds interleave over the same days.  A
staple is bought about ``repeat_frac * events / (users * staples)`` times (at least 2 is
required).  Staples come from a second generator seeded from ``seed``, and the catalogue and
interests are those of the same seed without the mode.  ``Dataset.staples`` (written as
``staples.json``) holds each user's staples and each staple item's period in ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

__all__ = ["CATEGORIES", "EVENT_TYPES", "EVENT_TYPE_PROBS", "Category", "Dataset", "generate"]

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "search")
EVENT_TYPE_PROBS: tuple[float, ...] = (0.60, 0.22, 0.08, 0.04, 0.06)
INTEREST_SHARE = 0.85  # share of item events drawn from the user's interest categories
MIN_EVENTS_PER_USER = 3
DAY_MS = 86_400_000
STAPLE_PERIOD_SIGMA = 0.35  # log-normal spread of the per-item periods around staple_days
STAPLE_GAP_SHAPE = 10.0  # Gamma shape of one inter-purchase gap (mean = the item's period)
MIN_PURCHASES_PER_STAPLE = 2.0  # repeat mode: repeat_frac * events >= this * users * staples


@dataclass(frozen=True)
class Category:
    """A product category: its nouns, brands, attribute slots, price range and search phrases."""

    name: str
    nouns: tuple[str, ...]  # every title contains exactly one of these
    brands: tuple[str, ...]
    slots: tuple[tuple[str, ...], ...]  # attribute choices appended to the title, in order
    price: tuple[float, float]  # plausible (low, high) in EUR
    queries: tuple[str, ...]  # what a user interested in this category types into search


_SHOE_SIZES = tuple(f"size {s}" for s in range(36, 47))

CATEGORIES: tuple[Category, ...] = (
    Category("running shoes", ("trail running shoes", "road running shoes", "running shoes"),
             ("Northpeak", "Stridewell", "Kestrel Run", "Vantor"),
             (("women's", "men's"), ("graphite", "neon yellow", "navy", "white", "coral"),
              ("mesh", "engineered knit", "Gore-Tex"), _SHOE_SIZES),
             (60, 180), ("waterproof trail shoes", "cushioned running shoes for marathon",
                         "lightweight road running shoes", "trail runners with grip")),
    Category("hydration packs", ("hydration pack", "hydration running vest", "hydration backpack"),
             ("Camelbrook", "Ridgeline", "Aquaroam"),
             (("black", "lime", "slate blue", "red"), ("ripstop nylon", "recycled polyester"),
              ("2 L bladder", "5 L", "10 L", "15 L")),
             (35, 140), ("hydration vest for ultramarathon", "backpack with water bladder",
                         "cycling hydration pack")),
    Category("espresso machines", ("espresso machine", "bean-to-cup coffee machine",
                                   "manual lever espresso maker"),
             ("Caffora", "Bellavista", "Baristo", "Moka Reale"),
             (("brushed steel", "matte black", "cream", "red"), ("stainless steel", "aluminium"),
              ("15 bar", "19 bar"), ("1.5 L water tank", "2 L water tank")),
             (120, 1200), ("espresso machine with milk frother", "home barista coffee maker",
                           "bean to cup coffee machine")),
    Category("yoga mats", ("yoga mat", "non-slip exercise mat", "travel yoga mat"),
             ("Lotusform", "Zenflow", "Asana Lab"),
             (("sage green", "lavender", "charcoal", "terracotta"), ("natural rubber", "TPE", "cork"),
              ("4 mm", "6 mm", "8 mm")),
             (20, 120), ("non slip yoga mat", "thick mat for pilates", "eco cork yoga mat")),
    Category("kids' raincoats", ("kids' raincoat", "children's rain jacket", "toddler rain poncho"),
             ("Puddlejump", "Little Drizzle", "Mudlark"),
             (("yellow", "red", "dinosaur print", "sky blue"), ("PU-coated", "recycled polyester"),
              ("age 2-3", "age 4-5", "age 6-7", "age 8-9")),
             (18, 70), ("waterproof jacket for kids", "toddler raincoat with hood",
                        "children's rain gear")),
    Category("wireless earbuds", ("wireless earbuds", "noise-cancelling earbuds",
                                  "true wireless earphones"),
             ("Sonique", "Auralink", "Beatforge", "Kinetic Audio"),
             (("black", "white", "midnight blue", "sand"), ("Bluetooth 5.3", "Bluetooth 5.4"),
              ("24 h battery", "30 h battery", "36 h battery")),
             (25, 300), ("noise cancelling earbuds", "bluetooth earphones for running",
                         "wireless earbuds with long battery")),
    Category("cast-iron pans", ("cast-iron skillet", "cast-iron frying pan",
                                "enamelled cast-iron casserole"),
             ("Forgewell", "Old Hearth", "Ironfield"),
             (("black", "cherry red", "ocean blue"), ("pre-seasoned", "enamelled"),
              ("20 cm", "26 cm", "30 cm")),
             (25, 250), ("pre seasoned cast iron skillet", "dutch oven for bread baking",
                         "heavy frying pan for steak")),
    Category("board games", ("strategy board game", "cooperative board game", "family card game"),
             ("Meeple Works", "Dicecraft", "Tabletop Forge"),
             (("space exploration theme", "medieval trading theme", "dungeon crawl theme"),
              ("1-4 players", "2-4 players", "2-6 players"), ("ages 8+", "ages 12+", "ages 14+")),
             (15, 90), ("strategy game for game night", "cooperative board game for two",
                        "family card game for kids")),
    Category("camping tents", ("dome tent", "backpacking tent", "family camping tent"),
             ("Summitra", "Basecamp Co.", "Fernhollow"),
             (("forest green", "orange", "grey"), ("ripstop nylon", "polyester", "silnylon"),
              ("1-person", "2-person", "4-person", "6-person")),
             (80, 600), ("lightweight backpacking tent", "waterproof family tent",
                         "two person tent for hiking")),
    Category("mechanical keyboards", ("mechanical keyboard", "gaming keyboard",
                                      "tenkeyless keyboard"),
             ("Keyforge", "Clackworks", "Typhoon"),
             (("black", "white", "retro beige", "pastel pink"), ("aluminium frame", "PBT keycaps"),
              ("60% layout", "75% layout", "full-size layout"),
              ("brown switches", "red switches", "blue switches")),
             (50, 250), ("hot swappable mechanical keyboard", "quiet keyboard for office",
                         "compact gaming keyboard")),
    Category("skincare", ("face moisturiser", "vitamin C serum", "hydrating night cream"),
             ("Dermalune", "Purelle", "Botaniqa"),
             (("for dry skin", "for oily skin", "for sensitive skin"),
              ("with hyaluronic acid", "with niacinamide", "fragrance-free"),
              ("30 ml", "50 ml", "100 ml")),
             (12, 90), ("moisturiser for dry skin", "serum for dark spots",
                        "fragrance free night cream")),
    Category("dog food", ("dry dog food", "grain-free dog kibble", "puppy food"),
             ("Wagwell", "Barkley Farms", "Canine Prime"),
             (("chicken and rice", "salmon and potato", "lamb"), ("adult", "puppy", "senior"),
              ("2 kg bag", "6 kg bag", "12 kg bag")),
             (15, 90), ("grain free food for dogs", "puppy kibble chicken", "senior dog dry food")),
    Category("cycling helmets", ("road bike helmet", "mountain bike helmet",
                                 "commuter cycling helmet"),
             ("Velotec", "Spokesafe", "Cadenza"),
             (("matte black", "white", "fluo orange"), ("EPS with MIPS", "in-mould polycarbonate"),
              ("size S", "size M", "size L")),
             (40, 250), ("bike helmet with MIPS", "lightweight road cycling helmet",
                         "commuter helmet with rear light")),
    Category("office chairs", ("ergonomic office chair", "mesh desk chair", "gaming chair"),
             ("Postura", "Deskline", "Sitwell"),
             (("black", "grey", "white"), ("breathable mesh", "faux leather", "fabric"),
              ("adjustable lumbar support", "with headrest", "4D armrests")),
             (90, 700), ("ergonomic chair for back pain", "desk chair with lumbar support",
                         "mesh office chair")),
    Category("acoustic guitars", ("acoustic guitar", "dreadnought guitar",
                                  "classical nylon-string guitar"),
             ("Harrow & Finch", "Cedarsong", "Mariposa"),
             (("natural finish", "sunburst", "black"), ("solid spruce top", "mahogany body",
                                                         "cedar top"),
              ("full size", "3/4 size", "parlour size")),
             (120, 1500), ("beginner acoustic guitar", "solid top guitar",
                           "nylon string classical guitar")),
    Category("children's books", ("picture book", "bedtime story book", "early reader book"),
             ("Bramble Press", "Owl & Acorn", "Little Lantern Books"),
             (("about dinosaurs", "about the ocean", "about friendship"),
              ("hardback", "paperback", "board book"), ("ages 2-4", "ages 4-6", "ages 6-8")),
             (6, 25), ("bedtime stories for toddlers", "dinosaur picture book",
                       "books for early readers")),
    Category("smartwatches", ("smartwatch", "GPS sports watch", "fitness tracker"),
             ("Pulsar Fit", "Chronowave", "Trailtime"),
             (("black", "rose gold", "olive"), ("silicone strap", "titanium case", "nylon strap"),
              ("41 mm", "45 mm", "47 mm")),
             (50, 700), ("gps watch for running", "fitness tracker with heart rate",
                         "smartwatch with long battery")),
    Category("houseplants", ("monstera plant", "snake plant", "fiddle leaf fig"),
             ("Greenhaus", "Leaf & Loam", "Verdant Co."),
             (("in ceramic pot", "in terracotta pot", "in nursery pot"),
              ("40 cm tall", "80 cm tall", "120 cm tall")),
             (15, 120), ("low light indoor plant", "large houseplant for living room",
                         "easy care plant")),
    Category("kitchen knives", ("chef's knife", "santoku knife", "bread knife"),
             ("Kitsune Blades", "Solingard", "Edgecraft"),
             (("Damascus steel", "German stainless steel", "ceramic blade"),
              ("olive wood handle", "pakkawood handle", "POM handle"), ("18 cm", "20 cm", "23 cm")),
             (30, 400), ("japanese santoku knife", "sharp damascus chef knife",
                         "serrated bread knife")),
    Category("ski goggles", ("ski goggles", "snowboard goggles"),
             ("Alpenglass", "Powderline", "Frostbyte"),
             (("mirror blue", "rose", "smoke"),
              ("photochromic lens", "polarised lens", "magnetic interchangeable lens"),
              ("medium fit", "large fit", "over-glasses fit")),
             (40, 220), ("anti fog ski goggles", "goggles for snowboarding",
                         "ski goggles over glasses")),
    Category("baby strollers", ("baby stroller", "travel pushchair", "jogging stroller"),
             ("Cuddleway", "Strollo", "Nestling"),
             (("graphite", "navy", "oat"), ("aluminium frame", "water-resistant fabric"),
              ("one-hand fold", "reversible seat", "all-terrain wheels")),
             (150, 900), ("lightweight travel stroller", "all terrain jogging stroller",
                          "compact fold pushchair")),
)


@dataclass
class Dataset:
    """Generated catalogue, event log and ground-truth interests."""

    items: list[dict]
    events: list[dict]
    interests: dict[str, list[str]] = field(default_factory=dict)
    # Repeat-purchase mode only: {"users": {user: [staple item ids]}, "period_ms": {item: ms}}.
    staples: dict[str, dict] = field(default_factory=dict)

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write items.jsonl, events.jsonl and interests.json (and, in repeat-purchase mode,
        staples.json) into out_dir; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "items": out / "items.jsonl",
            "events": out / "events.jsonl",
            "interests": out / "interests.json",
        }
        paths["items"].write_bytes(_jsonl(self.items))
        paths["events"].write_bytes(_jsonl(self.events))
        # One JSON object (user_id -> categories) on one line.
        paths["interests"].write_bytes(orjson.dumps(self.interests) + b"\n")
        if self.staples:
            paths["staples"] = out / "staples.json"
            paths["staples"].write_bytes(orjson.dumps(self.staples) + b"\n")
        return paths


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


def generate(users: int, items: int, events: int, seed: int,
             start_ts_ms: int = 1_700_000_000_000, repeat_frac: float = 0.0, staples: int = 3,
             staple_days: float = 4.0) -> Dataset:
    """Generate a deterministic synthetic dataset.

    ``events`` must be 0 or at least ``3 * users`` (every user gets >= 3 events).
    ``repeat_frac`` > 0 turns on the repeat-purchase mode (module docstring): that share of the
    events are purchases of each user's ``staples`` staple items, bought about every
    ``staple_days`` days; the other events (at least ``3 * users``) are the usual browsing.
    """
    for name, value, low in (("users", users, 1), ("items", items, 1), ("events", events, 0),
                             ("staples", staples, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0.0 <= repeat_frac < 1.0:
        raise ValueError(f"repeat_frac must be in [0, 1), got {repeat_frac!r}")
    if not staple_days > 0:
        raise ValueError(f"staple_days must be > 0, got {staple_days!r}")
    n_repeat = round(repeat_frac * events)
    if n_repeat:
        k = min(int(staples), int(items))
        if n_repeat < MIN_PURCHASES_PER_STAPLE * users * k:
            raise ValueError(
                f"repeat mode: {n_repeat} staple purchases for {users} users x {k} staples is "
                f"fewer than {MIN_PURCHASES_PER_STAPLE:g} per staple; raise events or "
                "repeat_frac, or lower users or staples")
        if events - n_repeat < MIN_EVENTS_PER_USER * users:
            raise ValueError(
                f"repeat mode: {events - n_repeat} browsing events left, need >= "
                f"{MIN_EVENTS_PER_USER} * users = {MIN_EVENTS_PER_USER * users}; lower repeat_frac")
    if 0 < events < MIN_EVENTS_PER_USER * users:
        raise ValueError(
            f"events must be 0 or >= {MIN_EVENTS_PER_USER} * users = "
            f"{MIN_EVENTS_PER_USER * users} (every user gets at least "
            f"{MIN_EVENTS_PER_USER} events), got {events}")
    users, items, events = int(users), int(items), int(events)
    rng = np.random.Generator(np.random.PCG64(seed))
    n_cat = len(CATEGORIES)

    # --- categories: Zipf popularity in a seed-dependent order -------------------------------
    cat_pop = np.empty(n_cat)
    cat_pop[rng.permutation(n_cat)] = _zipf(n_cat, 0.8)

    # --- items: every category gets one item first (when possible), the rest by popularity ---
    k = min(items, n_cat)
    first = rng.choice(n_cat, size=k, replace=False, p=cat_pop)
    rest = rng.choice(n_cat, size=items - k, p=cat_pop)
    item_cat = rng.permutation(np.concatenate([first, rest]))
    attr_u = rng.random((items, 2 + max(len(c.slots) for c in CATEGORIES)))
    price_u = rng.random(items)

    item_rows: list[dict] = []
    for i in range(items):
        c = CATEGORIES[int(item_cat[i])]
        u = attr_u[i]
        brand = c.brands[int(u[0] * len(c.brands))]
        noun = c.nouns[int(u[1] * len(c.nouns))]
        attrs = [s[int(u[2 + j] * len(s))] for j, s in enumerate(c.slots)]
        lo, hi = c.price
        # Log-uniform within the category's range, with a shop-like .99 ending.
        price = round(int(lo * (hi / lo) ** float(price_u[i])) + 0.99, 2)
        item_rows.append({
            "item_id": f"i{i + 1:05d}",
            "title": f"{brand} {noun}, " + ", ".join(attrs),
            "category": c.name,
            "brand": brand,
            "price": float(price),
        })

    # Within-category Zipf popularity (random rank order); global popularity = cat * within.
    order = np.argsort(item_cat, kind="stable")  # items grouped by category
    sorted_cat = item_cat[order]
    counts = np.bincount(item_cat, minlength=n_cat)
    within = np.empty(items)
    cum_key = np.empty(items)  # category c occupies (c, c + 1] so one searchsorted samples any c
    start = 0
    for ci in range(n_cat):
        n = int(counts[ci])
        if n == 0:
            continue
        w = _zipf(n, 1.0)[rng.permutation(n)]
        within[start:start + n] = w
        cs = np.cumsum(w)
        cum_key[start:start + n] = ci + cs / cs[-1]
        cum_key[start + n - 1] = ci + 1.0  # guard against float round-off at the upper edge
        start += n
    global_pop = cat_pop[sorted_cat] * within
    global_pop /= global_pop.sum()

    # --- users: 1-3 interests, sampled without replacement by category popularity ----------
    nonempty = counts > 0
    n_int = rng.choice([1, 2, 3], size=users, p=[0.45, 0.35, 0.20])
    n_int = np.minimum(n_int, int(nonempty.sum()))
    # Gumbel top-k == weighted sampling without replacement, vectorised.
    logp = np.where(nonempty, np.log(np.where(nonempty, cat_pop, 1.0)), -np.inf)
    keys = logp + rng.gumbel(size=(users, n_cat))
    top = np.argsort(-keys, axis=1, kind="stable")[:, :3]
    user_ids = [f"u{u + 1:05d}" for u in range(users)]
    interests = {user_ids[u]: [CATEGORIES[int(c)].name for c in top[u, :n_int[u]]]
                 for u in range(users)}

    staple_info: dict[str, dict] = {}
    staple_ev: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    if n_repeat:
        within_by_item = np.empty(items)
        within_by_item[order] = within
        pop_by_item = np.empty(items)
        pop_by_item[order] = global_pop
        staple_ev, staple_info = _staples(
            np.random.Generator(np.random.PCG64([seed, 0x5714])), n_repeat, int(staples),
            float(staple_days), item_cat, within_by_item, pop_by_item, top, n_int, user_ids,
            item_rows)
    n_browse = events - n_repeat

    event_rows: list[dict] = []
    if events:
        events = n_browse
        # Heavy-tailed activity (few heavy users, many light): 3 guaranteed events each, the
        # rest by log-normal weights (Pareto let one user take ~10% of the log).
        activity = rng.lognormal(0.0, 1.1, size=users)
        extra = rng.multinomial(events - MIN_EVENTS_PER_USER * users, activity / activity.sum())
        per_user = extra + MIN_EVENTS_PER_USER
        ev_user = rng.permutation(np.repeat(np.arange(users), per_user))

        ev_type = rng.choice(len(EVENT_TYPES), size=events, p=EVENT_TYPE_PROBS)
        slot = (rng.random(events) * n_int[ev_user]).astype(np.int64)
        ev_cat = top[ev_user, slot]
        in_cat = order[np.searchsorted(cum_key, ev_cat + rng.random(events), side="right")]
        popular = order[rng.choice(items, size=events, p=global_pop)]
        ev_item = np.where(rng.random(events) < INTEREST_SHARE, in_cat, popular)
        position = np.minimum(rng.geometric(0.3, size=events), 10)  # top slots get most traffic
        query_u = rng.random(events)
        # Gaps of seconds to minutes (log-normal, median ~10 s); first event at start_ts_ms.
        gaps = np.clip(rng.lognormal(np.log(10_000), 1.0, size=events), 1, 600_000)
        gaps = gaps.astype(np.int64)
        gaps[0] = 0
        ts = start_ts_ms + np.cumsum(gaps)

        types = [EVENT_TYPES[t] for t in ev_type.tolist()]
        item_ids = [item_rows[i]["item_id"] for i in ev_item.tolist()]
        for e, (u, t, it, c, p, q, when) in enumerate(zip(
                ev_user.tolist(), types, item_ids, ev_cat.tolist(), position.tolist(),
                query_u.tolist(), ts.tolist())):
            row: dict = {"event_id": f"e{e + 1:08d}", "user_id": user_ids[u], "type": t, "ts": when}
            if t == "search":
                qs = CATEGORIES[c].queries
                row["query"] = qs[int(q * len(qs))]
            else:
                row["item_id"] = it
                if t in ("view", "click"):
                    row["position"] = p
            event_rows.append(row)
        if staple_ev is not None:
            event_rows = _merge_staples(event_rows, ts - start_ts_ms, staple_ev, user_ids,
                                        item_rows, start_ts_ms)

    return Dataset(items=item_rows, events=event_rows, interests=interests, staples=staple_info)


def _staples(rng: np.random.Generator, n_repeat: int, staples: int, staple_days: float,
             item_cat: np.ndarray, within: np.ndarray, pop: np.ndarray, top: np.ndarray,
             n_int: np.ndarray, user_ids: list[str], item_rows: list[dict],
             ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, dict]]:
    """Each user's staples and the ``n_repeat`` earliest staple purchases:
    ((ms offsets from the start, sorted), user indices, item indices), and the ``staples`` info."""
    users, items = len(user_ids), len(item_rows)
    k = min(staples, items)
    period = staple_days * DAY_MS * np.exp(STAPLE_PERIOD_SIGMA * rng.standard_normal(items))
    # Per user: Gumbel top-k of log(0.85 * interest-category popularity + 0.15 * global).
    chosen = np.empty((users, k), dtype=np.int64)
    chunk = 1024
    for lo in range(0, users, chunk):
        hi = min(users, lo + chunk)
        member = np.zeros((hi - lo, int(item_cat.max()) + 1))
        for r, u in enumerate(range(lo, hi)):
            member[r, top[u, :n_int[u]]] = 1.0 / n_int[u]
        w = INTEREST_SHARE * member[:, item_cat] * within + (1.0 - INTEREST_SHARE) * pop
        keys = np.log(w) + rng.gumbel(size=w.shape)
        part = np.argpartition(-keys, k - 1, axis=1)[:, :k]  # the k largest keys, any order
        by_key = np.argsort(-np.take_along_axis(keys, part, axis=1), axis=1, kind="stable")
        chosen[lo:hi] = np.take_along_axis(part, by_key, axis=1)
    # Renewal processes, one per (user, staple): enough purchases per process that the
    # n_repeat earliest overall all come before any process runs out.
    pair_user = np.repeat(np.arange(users), k)
    pair_item = chosen.reshape(-1)
    p = period[pair_item][:, None]
    m = int(np.ceil(4.0 * n_repeat / len(pair_item))) + 10
    while True:
        gaps = p * rng.gamma(STAPLE_GAP_SHAPE, 1.0 / STAPLE_GAP_SHAPE, size=(len(pair_item), m))
        gaps[:, 0] = p[:, 0] * rng.random(len(pair_item))  # first purchase: uniform phase
        t = np.cumsum(gaps, axis=1)
        flat = np.argsort(t, axis=None, kind="stable")[:n_repeat]
        if t.reshape(-1)[flat[-1]] <= t[:, -1].min():
            break
        m *= 2
    pair = flat // m
    info: dict[str, dict] = {"users": {user_ids[u]: [item_rows[i]["item_id"] for i in chosen[u].tolist()]
                      for u in range(users)},
            "period_ms": {item_rows[i]["item_id"]: round(float(period[i]))
                          for i in np.unique(chosen).tolist()}}
    return (t.reshape(-1)[flat], pair_user[pair], pair_item[pair]), info


def _merge_staples(browse: list[dict], browse_off: np.ndarray,
                   staple_ev: tuple[np.ndarray, np.ndarray, np.ndarray], user_ids: list[str],
                   item_rows: list[dict], start_ts_ms: int) -> list[dict]:
    """Browsing rows scaled onto the staples' span, merged with the staple purchases in time
    order; timestamps made strictly increasing (ms) and event ids renumbered in that order."""
    t_staple, s_user, s_item = staple_ev
    span = float(t_staple[-1])
    off = browse_off.astype(np.float64)
    if off[-1] > 0:
        off = off * (span / off[-1])
    rows = browse + [{"event_id": "", "user_id": user_ids[u], "type": "purchase", "ts": 0,
                      "item_id": item_rows[i]["item_id"]}
                     for u, i in zip(s_user.tolist(), s_item.tolist())]
    when = np.concatenate([off, t_staple])
    o = np.argsort(when, kind="stable")
    ms = np.floor(when[o]).astype(np.int64)
    steps = np.arange(len(ms), dtype=np.int64)
    ms = np.maximum.accumulate(ms - steps) + steps  # strictly increasing, at most a few ms later
    out = []
    for n, (r, t) in enumerate(zip(o.tolist(), ms.tolist())):
        row = rows[r]
        row["event_id"], row["ts"] = f"e{n + 1:08d}", start_ts_ms + t
        out.append(row)
    return out
