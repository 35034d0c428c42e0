"""``PROFILES_GIL_SWITCH_MS``: validated in one line, applied at worker start (and by the scale
harness) through ``stream.worker.gil.set_gil_switch``."""

from __future__ import annotations

import sys

import pytest

from stream.core.errors import ConfigError
from stream.settings import Settings
from stream.worker.gil import set_gil_switch

pytestmark = pytest.mark.unit


def test_the_setting_is_validated_in_one_line() -> None:
    assert Settings.from_env({}).gil_switch_ms == 1.0
    assert Settings.from_env({"PROFILES_GIL_SWITCH_MS": "0.5"}).gil_switch_ms == 0.5
    for raw in ("0", "-1", "101", "nan"):
        with pytest.raises(ConfigError) as exc:
            Settings.from_env({"PROFILES_GIL_SWITCH_MS": raw})
        assert str(exc.value) == f"gil_switch_ms must be in 0.05..100, got {float(raw)}"


def test_set_gil_switch_sets_the_interpreter_interval() -> None:
    before = sys.getswitchinterval()
    try:
        assert set_gil_switch(0.5) == pytest.approx(before * 1000)
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        assert set_gil_switch(2.0) == pytest.approx(0.5)
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)


def test_the_worker_applies_it_at_start(monkeypatch) -> None:
    """``run_worker`` sets it before loading anything (stopped right after, at the encoder)."""
    from stream import service

    seen: list[float] = []

    class Stop(Exception):
        pass

    def load_encoder(*a: object, **k: object) -> None:
        seen.append(sys.getswitchinterval())
        raise Stop

    before = sys.getswitchinterval()
    monkeypatch.setattr(service, "load_encoder", load_encoder)
    try:
        with pytest.raises(Stop):
            service.run_worker(Settings.from_env({}, gil_switch_ms=0.25))
    finally:
        sys.setswitchinterval(before)
    assert seen == [pytest.approx(0.00025)]
