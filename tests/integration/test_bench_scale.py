"""``profiles bench scale`` with its recovery run at a tiny size: a real broker and two real
``profiles worker`` processes (the bulk-built state as snapshots, a tail applied, SIGKILL,
restart); the restarted worker's profiles equal the offline oracle and its look-alikes have
recall@10 >= 0.95 against brute force over the oracle."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_recovery_after_sigkill_reaches_the_oracle(broker) -> None:
    # the restarted worker joins once the killed one's session has expired: keep it short
    env = {**os.environ, "PROFILES_SESSION_TIMEOUT_S": "6"}
    p = subprocess.run([sys.executable, "-m", "stream.cli", "bench", "scale", "--users", "300",
                        "--items", "300", "--json", "--steady-seconds", "1", "--churn", "1",
                        "--bootstrap", broker.bootstrap],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    rec = r["recovery"]
    assert "error" not in rec, rec
    assert rec["ok"] and isinstance(r["recovery_s"], float) and r["recovery_s"] > 0, rec
    assert rec["ready_s"] <= r["recovery_s"]
    assert rec["max_abs_error"] <= 1e-5 and rec["profiles_missing"] == 0
    assert rec["user_recall_at_10"] >= 0.95
    assert rec["rejected_before_kill"] == 0
    # /candidates and /similar over HTTP on the real worker while the tail streamed in
    assert isinstance(r["candidates_p99_ms"], float) and isinstance(r["similar_p99_ms"], float)
    assert set(rec["probe"]["statuses"]) == {"candidates_200", "similar_200"}
    # the tail was applied before the kill; what no snapshot covered was applied again
    assert rec["replayed_events"] is not None and 0 <= rec["replayed_events"] <= 3000
