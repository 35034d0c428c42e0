"""The Open Bandit Dataset sample for tests: the obp 0.5.7 sdist, downloaded once into the
settings' cache folder (``PROFILES_CACHE_DIR``, default ``~/.cache/profiles``) + ``obd``, as
``profiles data obd`` does; never committed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stream.data.obd import fetch_obd, member, read_tar_text
from stream.settings import Settings


def cache_dir() -> Path:
    return Settings.from_env().cache_path() / "obd"


def obd_sdist() -> Path:
    return fetch_obd(cache_dir())


def obd_frame(campaign: str = "random", population: str = "all") -> pd.DataFrame:
    import io

    return pd.read_csv(io.StringIO(read_tar_text(obd_sdist(), member(campaign, population))),
                       index_col=0)
