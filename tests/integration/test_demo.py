"""`profiles demo` stopped by SIGTERM in the middle of its replay leaves no broker or worker
behind (they run in their own sessions, so only the demo's own cleanup stops them), and
nothing in the folder it was started from."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.kafka.broker import free_port

pytestmark = pytest.mark.timeout(300)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_mid_replay_stops_broker_and_worker(tmp_path) -> None:
    http_port = free_port()
    log = tmp_path / "demo.log"
    cwd = tmp_path / "cwd"  # the demo (and its worker) must write nothing here
    cwd.mkdir()
    env = {**os.environ, "PROFILES_ENCODER_KIND": "hashing", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "demo", "--port", str(http_port), "--events",
             "200000", "--rate", "500", "--workdir", str(tmp_path / "work")],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd)
    try:
        deadline = time.monotonic() + 240
        while "replaying" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        broker_port = int(re.search(r"embedded broker \(Tansu\) on [\d.]+:(\d+)", log.read_text()).group(1))
        assert _listening(broker_port) and _listening(http_port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 30
        while _listening(broker_port) or _listening(http_port):
            assert time.monotonic() < deadline, "broker or worker still listening after the demo exited"
            time.sleep(0.2)
        # nothing written into the current folder (faust's data folder was `profiles-data/`)
        assert sorted(p.name for p in cwd.iterdir()) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
