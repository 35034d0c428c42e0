"""The Open Bandit Dataset sample for tests: the obp 0.5.7 sdist, downloaded once into a cache
folder (``PROFILES_DATA_CACHE``, default ``~/.cache/realtime-profiles``), never committed."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from stream.obd import fetch_obd, member, read_tar_text


def cache_dir() -> Path:
    return Path(os.environ.get("PROFILES_DATA_CACHE", Path.home() / ".cache" / "realtime-profiles"))


def obd_sdist() -> Path:
    return fetch_obd(cache_dir())


def obd_frame(campaign: str = "random", population: str = "all") -> pd.DataFrame:
    import io

    return pd.read_csv(io.StringIO(read_tar_text(obd_sdist(), member(campaign, population))),
                       index_col=0)
