"""The real server in a subprocess: uvicorn on a free loopback port with a temporary store.

One server serves the module's tests; each test works in collections of its own (tenants are
isolated by collection), so no test sees another's data. Keys are created straight in the
store, as ``visage keys create`` does, and the server picks them up on the next request.

The store is a SQLite file. A module where the store matters (the audit chain, refusals,
fuzzing, concurrent writers) sets ``STORES = ("sqlite", "postgresql")``: its tests then run
once against a server on each, the PostgreSQL one on a fresh database of ``pg_server``. Only
those modules pay for the second server (docs/server.md, "Tests", says how long).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import pg_database
from visage.server.keys_store import KeyStore
from visage.signing import load_signing_key
from visage.store import Store, database_url, sqlite_path

START_TIMEOUT_S = 90.0
BIND_TRIES = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``visage serve``: its URL, store, an admin token, and ways to get more keys."""

    url: str
    store: str
    log: Path
    process: subprocess.Popen[bytes]
    anchors: Path | None = None
    """The audit anchors file when set (else SQLite's default beside the file)."""
    signing_key: Path | None = None
    """The edge signing key file when set (else SQLite's default beside the file)."""
    admin: str = ""
    _keys: KeyStore | None = field(default=None, repr=False)

    @property
    def db(self) -> Path:
        """The SQLite file of the store, for tests that read the file itself."""
        path = sqlite_path(self.store)
        assert path is not None, f"this test reads a SQLite file; the store is {self.store}"
        return path

    @property
    def keys(self) -> KeyStore:
        if self._keys is None:
            self._keys = KeyStore(Store.open(self.store, anchors=self.anchors))
        return self._keys

    def key(
        self,
        scopes: Sequence[str],
        collections: Sequence[str] = ("*",),
        *,
        rate: float | None = None,
        devices: Sequence[str] | None = None,
    ) -> str:
        """A fresh key's token."""
        return self.keys.create(
            "test", scopes=scopes, collections=collections, rate_limit=rate, devices=devices
        ).token

    def client(self, token: str | None = None, *, address: str | None = None) -> httpx.Client:
        """A client; ``address``: the loopback address it connects from (127.0.0.2, …), so a
        test's failed authentications count against a client address of its own."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(local_address=address) if address else None
        return httpx.Client(base_url=self.url, headers=headers, timeout=120.0, transport=transport)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


class _PortTaken(Exception):
    """Another process bound the port between :func:`free_port` and the server's bind."""


def start_server(
    folder: Path, *, store: str | None = None, bootstrap: bool = False, **settings: str
) -> Server:
    """Start ``python -m visage serve`` with ``VISAGE_*`` settings and wait until it is ready.

    ``store``: the store's SQLAlchemy URL (default: ``folder/gallery.db``). A store that is not
    a SQLite file has no folder for the audit anchors and the edge signing key SQLite keeps
    beside it: unless ``settings`` name them, they go in ``folder`` (as an operator sets them,
    the key made as ``visage edge keygen`` makes it). ``bootstrap``: let ``visage serve`` create
    and print its first admin key (into :attr:`Server.log`).

    :func:`free_port` lets the port go before the server binds it, so another process may take
    it: the server then exits ("address already in use") and is started on a new port, up to
    :data:`BIND_TRIES` times.
    """
    url = store or database_url(folder / "gallery.db")
    if sqlite_path(url) is None:
        settings = {
            "audit_anchors": str(folder / "store.audit-anchors"),
            "edge_signing_key": str(folder / "edge-signing-key.pem"),
            **settings,
        }
        folder.mkdir(parents=True, exist_ok=True)
        if settings["edge_signing_key"]:  # "" leaves it unset, as an operator may forget to
            load_signing_key(settings["edge_signing_key"], create=True)
    for _ in range(BIND_TRIES - 1):
        try:
            return _start_once(folder, url, bootstrap, settings)
        except _PortTaken:
            continue
    return _start_once(folder, url, bootstrap, settings)


def start_beside(other: Server, folder: Path, **settings: str) -> Server:
    """Another server process on ``other``'s store, audit anchors and edge signing key: two
    deployments (or hosts) sharing one database."""
    shared = {"audit_anchors": str(other.anchors)} if other.anchors else {}
    if other.signing_key:
        shared["edge_signing_key"] = str(other.signing_key)
    return start_server(folder, store=other.store, **shared, **settings)


def _start_once(folder: Path, url: str, bootstrap: bool, settings: dict[str, str]) -> Server:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "VISAGE_DB": url,
        "VISAGE_HOST": "127.0.0.1",
        "VISAGE_PORT": str(port),
        "VISAGE_LOG_LEVEL": "warning",
    }
    env.update({f"VISAGE_{k.upper()}": v for k, v in settings.items()})
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "visage",
                "serve",
                *([] if bootstrap else ["--no-bootstrap-key"]),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    named = {k: Path(settings[k]) for k in ("audit_anchors", "edge_signing_key") if settings.get(k)}
    server = Server(
        url=f"http://127.0.0.1:{port}",
        store=url,
        log=log,
        process=process,
        anchors=named.get("audit_anchors"),
        signing_key=named.get("edge_signing_key"),
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if "address already in use" in server.log_tail().lower():
                raise _PortTaken(port)
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2.0).status_code == 200:
                server.admin = server.admin or server.key(["admin"])
                # Whoever answers must hold our store (not a process that took the port).
                mine = httpx.get(
                    f"{server.url}/v1/collections",
                    timeout=2.0,
                    headers={"Authorization": f"Bearer {server.admin}"},
                )
                if mine.status_code == 200 and process.poll() is None:
                    return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server not ready after {START_TIMEOUT_S} s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a module declaring ``STORES`` once per store kind it names."""
    stores = getattr(metafunc.module, "STORES", None)
    if stores and "store" in metafunc.fixturenames:
        metafunc.parametrize("store", stores, indirect=True, scope="module")


@pytest.fixture(scope="module")
def store(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The module's store URL: ``None`` (SQLite in the server's folder) or a fresh PostgreSQL
    database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    with pg_database(request.getfixturevalue("pg_server")) as url:
        yield url


@contextmanager
def served(folder: Path, *, store: str | None = None, **settings: str) -> Iterator[Server]:
    """A server for the block (:func:`start_server`'s arguments), stopped after it; the block
    fails if the server logged a traceback."""
    running = start_server(folder, store=store, **settings)
    try:
        yield running
    finally:
        stop_server(running)
    errors = [line for line in running.log_tail(100_000).splitlines() if "Traceback" in line]
    assert not errors, f"the server logged tracebacks:\n{running.log_tail()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, store: str | None) -> Iterator[Server]:
    with served(tmp_path_factory.mktemp("server"), store=store) as running:
        yield running


@pytest.fixture
def collection(server: Server) -> str:
    """A new, empty collection for this test alone."""
    name = f"c-{uuid.uuid4().hex[:10]}"
    with server.client(server.admin) as client:
        response = client.post("/v1/collections", json={"name": name})
        assert response.status_code == 201, response.text
    return name


def problem(response: httpx.Response, status: int) -> dict[str, object]:
    """Assert ``response`` is a problem+json with ``status``; return the document."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert (
        body["status"] == status
        and body["detail"]
        and str(body["type"]).startswith("urn:visage:problem:")
    )
    return dict(body)
