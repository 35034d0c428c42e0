"""``profiles worker --processes N``: N worker processes of one consumer group on this host.

    parent (this module + stream.serve.front)            children (``profiles worker``,
      public http_port: proxy, /metrics merged,           ``--processes 1``, each its own
      /stats, /readyz, /healthz          ──loopback──►    process group, on a private port,
      restarts a child that dies (backoff)                advertised for routing)

Each child is the plain worker: it joins the group, owns some partitions, serves its private
port and advertises that URL as its faust canonical URL, so request routing between workers
(``stream.serve.routing``) works between the children as between hosts.  A child that dies is
started again after a backoff (1 s, doubling to 30 s; back to 1 s once a child has lived a
minute); meanwhile the group rebalance hands its partitions to the others.  SIGTERM/SIGINT
to the parent sends SIGTERM to every child (each writes its snapshots) and SIGKILLs the
process group of any still running after ``stop_deadline_s``.  Children get
``PR_SET_PDEATHSIG`` (SIGTERM): a parent killed with SIGKILL does not leave them behind.

This module starts and watches processes only; the HTTP front is ``stream.serve.front`` and
the composition ``stream.service.run``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from stream.settings import Settings
from stream.worker.metrics import SupervisorMetrics

__all__ = ["Child", "Supervisor", "child_url", "local_url", "process_count"]

log = logging.getLogger("stream.supervisor")

WORKER_COMMAND = (sys.executable, "-m", "stream.cli", "worker")
#: below compose's ``stop_grace_period`` (30 s), after which the engine kills the parent
STOP_DEADLINE_S = 25.0
#: exit status of ``profiles`` for a usage or configuration error: the same for every child
CONFIG_EXIT = 2
_PR_SET_PDEATHSIG = 1


def cores() -> int:
    """CPUs this process may run on (the affinity mask: a container's quota of cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def process_count(s: Settings) -> int:
    """Worker processes for ``s``: ``processes``, or when 0 one per core but no more than the
    events topic's partitions (a member without a partition only holds memory)."""
    if s.processes:
        return s.processes
    return max(1, min(cores(), s.partitions))


def local_url(host: str, port: int) -> str:
    """The URL the parent reaches a child bound to ``host`` on (a wildcard: loopback)."""
    h = host.strip().strip("[]")
    if h in ("", "0.0.0.0"):
        h = "127.0.0.1"
    elif h == "::":
        h = "::1"
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def child_url(s: Settings, port: int) -> str:
    """The URL a child advertises to the group: the parent's public URL on the child's port
    (``PROFILES_ADVERTISED_URL``'s scheme and host when set, else ``http_host``)."""
    if not s.advertised_url:
        return local_url(s.http_host, port) if s.http_host in ("", "0.0.0.0", "::") else \
            s.replace(http_port=port).public_url()
    parts = urlsplit(s.advertised_url)
    host = parts.hostname or s.http_host
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or 'http'}://{host}:{port}"


def free_port(host: str) -> int:
    """A port of ``host`` nobody listens on now (the OS's choice)."""
    h = local_url(host, 1).split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    family = socket.AF_INET6 if ":" in h else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((h, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    h = local_url(host, 1).split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    family = socket.AF_INET6 if ":" in h else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            sock.bind((h, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM handler still stops it
        pass


@dataclass
class Child:
    """One worker process slot: its private port stays the same across restarts (the URL the
    group knows it by)."""

    slot: int
    port: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive short-lived runs (the backoff's exponent)
    exits: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    """Starts ``n`` children running ``command`` and keeps them running until :meth:`stop`."""

    def __init__(self, settings: Settings, n: int, *,
                 command: Sequence[str] = WORKER_COMMAND,
                 stop_deadline_s: float = STOP_DEADLINE_S,
                 backoff_s: tuple[float, float] = (1.0, 30.0), stable_s: float = 60.0) -> None:
        self.settings = settings
        self.command = list(command)
        self.stop_deadline_s = stop_deadline_s
        self.backoff_s = backoff_s
        self.stable_s = stable_s
        self.metrics = SupervisorMetrics()
        self.children = [Child(i, free_port(settings.http_host)) for i in range(n)]
        for c in self.children:
            self.metrics.restarts.labels(str(c.slot))  # 0 from the start: rate() sees the first
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []
        self.exit_code = 0

    # ------------------------------------------------------------------ views for the front
    def url(self, c: Child) -> str:
        return local_url(self.settings.http_host, c.port)

    def running(self) -> list[Child]:
        return [c for c in self.children if c.running()]

    def describe(self) -> list[dict[str, object]]:
        return [{"process": c.slot, "pid": c.pid, "url": child_url(self.settings, c.port),
                 "running": c.running(), "restarts": c.restarts} for c in self.children]

    # ------------------------------------------------------------------ lifecycle
    def child_settings(self, c: Child) -> Settings:
        return self.settings.replace(processes=1, http_port=c.port,
                                     advertised_url=child_url(self.settings, c.port))

    async def _spawn(self, c: Child) -> None:
        if not port_free(self.settings.http_host, c.port):  # taken while the child was down
            c.port = free_port(self.settings.http_host)
        env = self.child_settings(c).child_env({"PYTHONUNBUFFERED": "1"})
        c.proc = await asyncio.create_subprocess_exec(
            *self.command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        c.started = time.monotonic()
        log.info("process %d started (pid %d, %s)", c.slot, c.proc.pid,
                 child_url(self.settings, c.port))

    async def start(self) -> None:
        for c in self.children:
            if self._stopping.is_set():  # SIGTERM while the first ones started
                break
            await self._spawn(c)
            self._watchers.append(asyncio.get_running_loop().create_task(self._watch(c)))

    async def _watch(self, c: Child) -> None:
        """Wait for the child to exit; start it again after the backoff unless stopping."""
        while True:
            lived = 0.0
            if c.proc is not None:
                code = await c.proc.wait()
                c.exits.append(code)
                if self._stopping.is_set():
                    return
                lived = time.monotonic() - c.started
                if code == CONFIG_EXIT and lived < self.stable_s:
                    # the settings are every child's: starting again would fail the same way
                    log.error("process %d exited with a configuration error (code %d): "
                              "stopping", c.slot, code)
                    self.exit_code = CONFIG_EXIT
                    asyncio.get_running_loop().create_task(self.stop())
                    return
            c.failures = 0 if lived >= self.stable_s else c.failures + 1
            delay = min(self.backoff_s[1], self.backoff_s[0] * 2 ** max(0, c.failures - 1))
            if c.proc is not None:
                log.warning("process %d (pid %s) exited with code %d after %.1fs; its partitions "
                            "go to the others; starting it again in %.1fs", c.slot, c.pid,
                            c.proc.returncode, lived, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return  # stopped during the backoff
            except TimeoutError:
                pass
            c.restarts += 1
            self.metrics.restarts.labels(str(c.slot)).inc()
            try:
                await self._spawn(c)
            except OSError as exc:  # fork failed (memory, pids): again after the next backoff
                log.error("process %d could not be started: %s", c.slot, exc)
                c.proc = None
            if self._stopping.is_set():  # stop() began while it started: it missed this one
                _killpg(c, signal.SIGTERM)

    async def stop(self) -> None:
        """SIGTERM every child; SIGKILL the process group of those still running after
        ``stop_deadline_s``."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        running = self.running()
        for c in running:
            _killpg(c, signal.SIGTERM)
        if running:
            log.info("stopping %d processes (SIGTERM; SIGKILL after %.0fs)", len(running),
                     self.stop_deadline_s)
            waits = [asyncio.ensure_future(c.proc.wait()) for c in running if c.proc]
            _done, pending = await asyncio.wait(waits, timeout=self.stop_deadline_s)
            for c in running:
                if c.running():
                    log.warning("process %d (pid %s) still running after %.0fs: SIGKILL to its "
                                "process group", c.slot, c.pid, self.stop_deadline_s)
                    self.exit_code = self.exit_code or 1
                    _killpg(c, signal.SIGKILL)  # the group: anything the child started too
            if pending:
                await asyncio.wait(pending, timeout=10)
        for t in self._watchers:
            t.cancel()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once :meth:`stop` has finished (every child exited or was killed)."""
        await self._stopped.wait()


def _killpg(c: Child, sig: int) -> None:
    if c.proc is None:
        return
    try:
        os.killpg(c.proc.pid, sig)  # its own session: the group id is its pid
    except (ProcessLookupError, PermissionError):
        pass
