"""Reading event and item logs: JSONL (one JSON object per line) or CSV (by ``.csv`` suffix).

The reader never judges content: a JSON line that is not an object is kept as raw bytes (the
replay sends it as-is, so the worker dead-letters it); CSV rows become objects, with ``ts`` and
``position`` cells as integers and ``propensity`` and ``price`` as floats where they parse.
"""

from __future__ import annotations

import csv
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import orjson

__all__ = ["LogRecord", "check_file", "count_records", "iter_records", "read_events"]

# CSV cells converted to numbers; everything else stays a string.
_INT_FIELDS = frozenset({"ts", "position"})
_FLOAT_FIELDS = frozenset({"propensity", "price"})


class LogRecord(NamedTuple):
    value: bytes  # exactly what goes on the wire
    obj: dict | None  # parsed object, None for a line that is not a JSON object
    raw: bytes  # original line (for read_events' bytes case)


def check_file(path: Path | str) -> Path:
    """``path`` as a Path; FileNotFoundError (one line) when it is not a file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, f"no such file: {p}", str(p))
    return p


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def iter_records(path: Path, skipped: list[int]) -> Iterator[LogRecord]:
    """Yield wire records; ``skipped[0]`` counts blank lines / empty CSV rows."""
    if _is_csv(path):
        yield from _iter_csv(path, skipped)
        return
    with path.open("rb") as f:
        first = True
        for line in f:
            if first:
                line = line.removeprefix(b"\xef\xbb\xbf")  # tolerate a UTF-8 BOM
                first = False
            line = line.strip()
            if not line:
                skipped[0] += 1
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            yield LogRecord(line, obj if isinstance(obj, dict) else None, line)


def _convert(name: str, cell: str) -> object:
    # A cell that does not parse stays a string: validation is the worker's job.
    try:
        if name in _INT_FIELDS:
            return int(cell) if cell.lstrip("+-").isdigit() else int(float(cell))
        if name in _FLOAT_FIELDS:
            return float(cell)
    except ValueError:
        pass
    return cell


def _iter_csv(path: Path, skipped: list[int]) -> Iterator[LogRecord]:
    with path.open("r", newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            # Empty cells are omitted; cells beyond the header (key None) are dropped.
            obj = {k: _convert(k, v) for k, v in row.items()
                   if k is not None and isinstance(v, str) and v != ""}
            if not obj:
                skipped[0] += 1
                continue
            value = orjson.dumps(obj)
            yield LogRecord(value, obj, value)


def read_events(path: Path | str) -> Iterator[dict | bytes]:
    """Yield each record of a JSONL or CSV (by ``.csv`` suffix) log.

    JSON objects come back as dicts; a line that is not a JSON object comes back as raw bytes.
    Blank lines are skipped. A missing file raises FileNotFoundError.
    """
    p = check_file(path)
    for rec in iter_records(p, [0]):
        yield rec.obj if rec.obj is not None else rec.raw


def count_records(path: Path) -> int:
    """Lines of a JSONL file, rows of a CSV (a quick count for progress bars)."""
    n = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n - 1 if _is_csv(path) else n  # minus the CSV header
