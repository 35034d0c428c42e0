"""Seeded synthetic e-commerce data: a catalogue, users with latent interests, and a time-ordered event log.

Everything is drawn from one ``numpy.random.Generator(seed)`` so the same arguments always give
byte-identical files. Users have 1-3 interest categories; ~85% of their item events hit those
categories and the rest are globally popular items, so a popularity baseline works but a
profile-based ranker should beat it.
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

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write items.jsonl, events.jsonl and interests.json into out_dir; return their paths."""
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
        return paths


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


def generate(users: int, items: int, events: int, seed: int,
             start_ts_ms: int = 1_700_000_000_000) -> Dataset:
    """Generate a deterministic synthetic dataset.

    ``events`` must be 0 or at least ``3 * users`` (every user gets >= 3 events).
    """
    for name, value, low in (("users", users, 1), ("items", items, 1), ("events", events, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
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

    event_rows: list[dict] = []
    if events:
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

    return Dataset(items=item_rows, events=event_rows, interests=interests)
