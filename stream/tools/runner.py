"""Start and watch worker processes (used by ``profiles demo``, the benchmark and the tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stream.core.errors import ProfilesError
from stream.settings import Settings


@dataclass
class WorkerProcess:
    """``profiles worker`` as a child in its own process group."""

    settings: Settings
    log_path: Path
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    def start(self) -> WorkerProcess:
        # one worker process unless asked for more: the demo, the benchmark and the tests
        # must not start one per core behind each worker they run (``processes`` 0)
        s = self.settings if self.settings.processes else self.settings.replace(processes=1)
        env = s.child_env({"PYTHONUNBUFFERED": "1", **self.extra_env})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], env=env,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, path: str) -> dict[str, Any]:
        status, body = self.get(path)
        return {"_status": status, **json.loads(body)}

    def wait_ready(self, timeout_s: float = 180) -> None:
        self.wait_for(lambda: self.get("/readyz")[0] == 200, timeout_s, "worker ready")

    def wait_for(self, predicate, timeout_s: float, what: str, interval: float = 0.2):
        """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc is not None else None
                raise ProfilesError(f"worker exited (code {code}) while waiting for "
                                    f"{what}; log: {self.log_path}")
            try:
                value = predicate()
                if value:
                    return value
            except (OSError, ValueError) as exc:
                last_exc = exc
            time.sleep(interval)
        raise ProfilesError(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: "
                            f"{last_exc}); log: {self.log_path}")

    def stats(self) -> dict[str, Any]:
        return self.json("/stats")

    def metrics(self) -> dict[str, list]:
        _, body = self.get("/metrics")
        out: dict[str, list] = {}
        for fam in text_string_to_metric_families(body.decode()):
            out[fam.name] = fam.samples
        return out

    def total(self, family: str, by: str | None = None):
        """Sum a counter/gauge family's samples over every label but ``by`` (e.g. partition).

        Returns a float, or a dict ``{label value: sum}`` when ``by`` is given.
        """
        samples = [s for s in self.metrics().get(family, [])
                   if not s.name.endswith(("_created", "_bucket", "_count", "_sum"))]
        if by is None:
            return float(sum(s.value for s in samples))
        out: dict[str, float] = {}
        for s in samples:
            out[s.labels[by]] = out.get(s.labels[by], 0.0) + s.value
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL, 10)


def histogram_quantile(samples: list, q: float) -> float | None:
    """Quantile from Prometheus histogram bucket samples (linear within a bucket)."""
    buckets = sorted(((float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket")),
                     key=lambda b: b[0])
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            span = count - prev_count
            frac = (rank - prev_count) / span if span else 0.0
            return prev_le + (le - prev_le) * frac
        prev_le, prev_count = le, count
    return prev_le
