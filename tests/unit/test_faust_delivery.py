"""faust's message loop must not stop delivering to the events agent for an inline offset
commit (stream.kafka.app: ``broker_commit_every``); the commit timer commits instead."""

from __future__ import annotations

import pytest

from stream.settings import Settings

pytestmark = pytest.mark.unit


def test_the_workers_faust_consumer_never_commits_inline(tmp_path, monkeypatch) -> None:
    from stream.kafka.app import NO_INLINE_COMMIT, faust_app, worker_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BROKER_COMMIT_EVERY", raising=False)  # faust's env var would win
    s = Settings.from_env({}, state_dir=str(tmp_path / "state"))
    for app in (worker_app(s), faust_app(s, "bench-x")):
        # faust's default is 10,000: Consumer._drain_messages awaits a commit every 10,000 acks
        # (faust's Consumer reads this setting as its ``_commit_every``)
        assert app.conf.broker_commit_every == NO_INLINE_COMMIT
        assert app.conf.broker_commit_interval == 2.0  # the timer still commits
    # a worker that runs for ever at 10^6 events/s still never reaches it (about 146,000 years)
    assert NO_INLINE_COMMIT / 1e6 / 86400 / 365 > 100_000
