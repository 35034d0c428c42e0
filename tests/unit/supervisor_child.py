"""A stand-in worker process for tests/unit/test_supervisor.py: serves PROFILES_HTTP_PORT with
``/metrics`` (one counter, its pid as a label-free gauge), ``/readyz``, ``/stats`` and an echo of
any other request; exits 0 on SIGTERM.  ``python supervisor_child.py MODE``: ``ok``, ``stubborn``
(ignores SIGTERM and starts a grandchild in its process group), ``config`` (exits 2 at once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = sys.argv[1] if len(sys.argv) > 1 else "ok"
if MODE == "config":
    print("profiles: error: a bad setting", file=sys.stderr)
    sys.exit(2)
PORT = int(os.environ["PROFILES_HTTP_PORT"])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/metrics":
            text = ("# HELP fake_events_total Events.\n# TYPE fake_events_total counter\n"
                    f'fake_events_total{{partition="{PORT}"}} 5.0\n'
                    "# HELP fake_pid Pid.\n# TYPE fake_pid gauge\n"
                    f"fake_pid {os.getpid()}.0\n")
            self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.path == "/readyz":
            self._send(200, b'{"ready": true}')
        elif self.path == "/stats":
            if os.environ.get("PROFILES_API_TOKEN") and self.headers.get("Authorization") != \
                    "Bearer " + os.environ["PROFILES_API_TOKEN"]:
                self._send(401, b'{"error": "missing or wrong bearer token"}')
                return
            self._send(200, json.dumps({"events_applied": 10, "users": 3, "ready": True,
                                        "items_index": 7,
                                        "partitions": {str(PORT % 4): 10}}).encode())
        else:
            self._echo()

    def do_POST(self) -> None:
        self._echo()

    do_DELETE = do_GET

    def _echo(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        self._send(200, json.dumps({
            "pid": os.getpid(), "method": self.command, "path": self.path, "body": body,
            "auth": self.headers.get("Authorization"),
            "advertised": os.environ.get("PROFILES_ADVERTISED_URL"),
            "processes": os.environ.get("PROFILES_PROCESSES")}).encode())


server = ThreadingHTTPServer((os.environ.get("PROFILES_HTTP_HOST", "127.0.0.1"), PORT), Handler)
if MODE == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["FAKE_GRANDCHILD_FILE"], "w") as f:
        f.write(str(grandchild.pid))
else:
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever()
sys.exit(0)
