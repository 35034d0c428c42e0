"""Open Bandit Dataset (ZOZOTOWN, Nov 2019) -> our event JSONL and item catalogue.

The small OBD sample ships inside the ``obp==0.5.7`` sdist (no wheel).  :func:`fetch_obd`
downloads it at run time with pip into a cache folder (never committed) and the CSVs are read
straight from the tarball.  Each CSV row is one impression:

* a ``view`` event (``event_id = obd-<campaign>-<population>-<row>``) with ``item_id`` (the
  arm), ``position`` (1-3, as in the log), ``propensity`` (``propensity_score``) and ``ts``
  (epoch ms of ``timestamp``);
* where ``click == 1``, also a ``click`` event (``event_id`` + ``-click``, same ``ts``,
  ``impression_id`` = the view's event id so off-policy evaluation can join them);
* ``user_id`` is a pseudo-user: ``obd-`` + 12 hex digits of blake2b of the four hashed user
  features (the log has no user id).

``item_context.csv`` becomes the catalogue (``title = "obd item <id>"``, ``category`` /
``brand`` from the hashed item features 1 / 2, ``price`` = |item_feature_0|), so every event's
item is known when it arrives and nothing is parked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

OBP_VERSION = "0.5.7"
SDIST = f"obp-{OBP_VERSION}.tar.gz"
CAMPAIGNS = ("random", "bts")
POPULATIONS = ("all", "men", "women")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def fetch_obd(cache_dir: Path | str) -> Path:
    """Path of the obp sdist in ``cache_dir``, downloading it with pip when absent."""
    cache = Path(cache_dir)
    path = cache / SDIST
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--ignore-requires-python", f"obp=={OBP_VERSION}", "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"pip download obp=={OBP_VERSION} failed: {tail[0]}")
    return path


def member(campaign: str = "random", population: str = "all", name: str | None = None) -> str:
    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign must be one of {CAMPAIGNS}, got {campaign!r}")
    if population not in POPULATIONS:
        raise ValueError(f"population must be one of {POPULATIONS}, got {population!r}")
    return (f"obp-{OBP_VERSION}/obp/dataset/obd/{campaign}/{population}/"
            f"{name or population + '.csv'}")


def read_tar_text(sdist: Path | str, name: str) -> str:
    with tarfile.open(sdist, "r:gz") as tar:
        f = tar.extractfile(name)
        if f is None:
            raise FileNotFoundError(f"{name} not in {sdist}")
        return f.read().decode("utf-8")


def extract_obd(sdist: Path | str, out_dir: Path | str, campaign: str = "random",
                population: str = "all") -> tuple[Path, Path]:
    """Write the log CSV and ``item_context.csv`` of one campaign/population to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"obd-{campaign}-{population}.csv"
    items = out / f"obd-{campaign}-{population}-item_context.csv"
    log.write_text(read_tar_text(sdist, member(campaign, population)))
    items.write_text(read_tar_text(sdist, member(campaign, population, "item_context.csv")))
    return log, items


def ts_ms(text: str) -> int:
    """``2019-11-24 00:00:34.762830+00:00`` -> epoch ms (floored)."""
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    delta = dt - _EPOCH
    return (delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000)


def pseudo_user(features: Iterable[str]) -> str:
    h = hashlib.blake2b("|".join(features).encode("utf-8"), digest_size=6)
    return "obd-" + h.hexdigest()


def read_rows(text_or_path: str | Path) -> Iterator[dict[str, str]]:
    text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
    yield from csv.DictReader(io.StringIO(text))


def convert_rows(rows: Iterable[dict[str, str]], prefix: str = "obd") -> Iterator[dict]:
    """Events (dicts) of OBD log rows, in file order: a view per row, a click where click = 1."""
    for i, row in enumerate(rows):
        key = row.get("") or str(i)
        eid = f"{prefix}-{key}"
        ts = ts_ms(row["timestamp"])
        user = pseudo_user(row[f"user_feature_{j}"] for j in range(4))
        item = str(int(row["item_id"]))
        position = int(row["position"])
        propensity = float(row["propensity_score"])
        yield {"event_id": eid, "user_id": user, "type": "view", "ts": ts, "item_id": item,
               "position": position, "propensity": propensity}
        if int(row["click"]) == 1:
            yield {"event_id": f"{eid}-click", "user_id": user, "type": "click", "ts": ts,
                   "item_id": item, "position": position, "impression_id": eid}


def convert_items(rows: Iterable[dict[str, str]]) -> Iterator[dict]:
    for row in rows:
        item = str(int(row["item_id"]))
        yield {"item_id": item, "title": f"obd item {item}",
               "category": f"c-{row['item_feature_1'][:8]}",
               "brand": f"b-{row['item_feature_2'][:8]}",
               "price": abs(float(row["item_feature_0"]))}


def write_jsonl(path: Path | str, objs: Iterable[dict]) -> int:
    """Write one JSON object per line (creating the folder); returns how many."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "wb") as f:
        for o in objs:
            f.write(orjson.dumps(o))
            f.write(b"\n")
            n += 1
    return n


def convert_csv(csv_path: Path | str, out: Path | str, items_csv: Path | str | None = None,
                items_out: Path | str | None = None, prefix: str | None = None) -> dict:
    """Convert one OBD log CSV (and optionally its item_context.csv) to JSONL files."""
    csv_path = Path(csv_path)
    prefix = prefix or f"obd-{csv_path.stem}"
    rows = list(read_rows(csv_path))
    n_events = write_jsonl(out, convert_rows(rows, prefix))
    summary = {"rows": len(rows), "clicks": sum(int(r["click"]) for r in rows),
               "events": n_events, "events_file": str(out)}
    if items_csv is not None:
        items_out = items_out or Path(out).with_name(Path(out).stem + "-items.jsonl")
        summary["items"] = write_jsonl(items_out, convert_items(read_rows(Path(items_csv))))
        summary["items_file"] = str(items_out)
    return summary


def prepare_obd(out_dir: Path | str, cache_dir: Path | str, campaign: str = "random",
                population: str = "all") -> dict:
    """Fetch (cached), extract and convert: the CLI's ``profiles data obd``."""
    out = Path(out_dir)
    sdist = fetch_obd(cache_dir)
    log_csv, items_csv = extract_obd(sdist, out, campaign, population)
    summary = convert_csv(log_csv, out / "events.jsonl", items_csv, out / "items.jsonl",
                          prefix=f"obd-{campaign}-{population}")
    summary.update(csv=str(log_csv), item_context=str(items_csv), sdist=str(sdist))
    return summary
