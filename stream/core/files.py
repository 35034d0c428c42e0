"""Two small file helpers shared by every self-describing directory we write (the fine-tuned
encoder's model directory, the ranker's): a file's sha256, and the atomic swap of a finished
temporary folder into place (stdlib only)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from stream.core.errors import StateError

__all__ = ["read_meta", "replace_dir", "sha256_file", "verified_file"]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def replace_dir(tmp: Path, out: Path) -> None:
    """Make the finished folder ``tmp`` (a sibling of ``out``) become ``out``: every file is
    fsynced, an existing ``out`` is moved aside, ``tmp`` renamed into place, the old one removed.
    A reader sees the old directory or the new one, never a half-written one."""
    for p in tmp.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_meta(folder: Path, meta_file: str, fmt: str, label: str) -> dict[str, Any]:
    """The JSON metadata ``folder/meta_file`` of a self-describing directory, whose
    ``format`` must be ``fmt``; a :class:`StateError` (one line, starting with ``label``)
    when it is missing, unreadable or of another format."""
    path = folder / meta_file
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise StateError(f"{label}: no {meta_file}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{label}: unreadable {meta_file} ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise StateError(f"{label}: unsupported format {got!r}, this version reads {fmt!r}")
    return meta


def verified_file(folder: Path, meta: dict[str, Any], default: str, label: str) -> Path:
    """The data file ``meta["arrays_file"]`` (else ``default``) of ``folder``, checked against
    ``meta["arrays_sha256"]``; a :class:`StateError` (one line) when missing or modified."""
    path = folder / str(meta.get("arrays_file", default))
    if not path.is_file():
        raise StateError(f"{label}: {path.name} is missing")
    if meta.get("arrays_sha256") != sha256_file(path):
        raise StateError(f"{label}: {path.name} does not match its recorded sha256 "
                         "(corrupt or modified)")
    return path
