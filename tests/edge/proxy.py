"""A TCP proxy for fault tests: down (nothing listening), or cutting connections mid-upload;
and :class:`Impostor`, an HTTP server that answers the edge endpoints with what an attacker
chooses (put it behind the proxy, then point the proxy at the real server).

Each accepted connection asks ``plan(n)`` (n = 0, 1, 2, …) what to do with it:

- ``"pass"``: forward both ways until either side closes;
- ``"cut-request"``: forward only the first ``cut_bytes`` bytes of the request, then close
  both sides — the server never gets a whole request;
- ``"cut-response"``: forward the whole request, then close the client's side as soon as the
  server starts answering — the server has done the work, the client never hears of it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``; :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        target: int | None = None,
        *,
        port: int | None = None,
        plan: Callable[[int], str] = lambda n: "pass",
        cut_bytes: int = 200,
    ) -> None:
        self.port = port or free_port()
        self.target = target
        self.plan = plan
        self.cut_bytes = cut_bytes
        self.connections = 0
        self.cuts: list[str] = []
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, target: int | None = None) -> None:
        if target is not None:
            self.target = target
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with suppress(OSError):
                self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                n = self.connections
                self.connections += 1
            threading.Thread(target=self._serve, args=(client, self.plan(n)), daemon=True).start()

    def _serve(self, client: socket.socket, action: str) -> None:
        assert self.target is not None
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        if action != "pass":
            self.cuts.append(action)
        limit = self.cut_bytes if action == "cut-request" else None
        up = threading.Thread(target=self._pump, args=(client, upstream, limit), daemon=True)
        up.start()
        self._pump(upstream, client, 0 if action == "cut-response" else None)
        up.join(timeout=30)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        """Copy src → dst; after ``limit`` bytes (None: no limit) close both sockets."""
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[: max(limit - sent, 0)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                sock.close()


class Impostor:
    """Answers ``GET /v1/edge/public-key`` with ``key`` and ``GET /v1/edge/snapshot`` with
    ``snapshot``, as a machine in the middle would; counts the requests it answered."""

    def __init__(self, key: str, snapshot: bytes) -> None:
        impostor = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                impostor.requests += 1
                if self.path.startswith("/v1/edge/public-key"):
                    body = json.dumps({"key": key}).encode()
                else:
                    body = snapshot
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
