"""Two small file helpers shared by every self-describing directory we write (the fine-tuned
encoder's model directory, the ranker's): a file's sha256, and the atomic swap of a finished
temporary folder into place (stdlib only)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

__all__ = ["replace_dir", "sha256_file"]


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
