"""``visage serve`` on a real PostgreSQL server (the throw-away cluster of the gallery tests):
the start-up output never shows the database password (issue 18, item 7)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.gallery.conftest import pg_server  # noqa: F401  (the PostgreSQL cluster)

from .conftest import free_port

PASSWORD = "s3cretpw"


@dataclass(frozen=True)
class Cluster:
    """The test cluster: ``admin`` a libpq URL as its superuser; ``host``/``port`` to reach it."""

    admin: str
    host: str
    port: int

    def url(self, role: str, database: str, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{role}:{password}@{self.host}:{self.port}/{database}"

    def run(self, *statements: str, database: str = "postgres") -> None:
        """Run ``statements`` as the superuser in ``database``."""
        with psycopg.connect(f"{self.admin}/{database}", autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]  (test DDL, no parameters)


@pytest.fixture
def cluster(pg_server: str) -> Cluster:  # noqa: F811
    parsed = make_url(pg_server)
    admin = pg_server.replace("postgresql+psycopg://", "postgresql://")
    return Cluster(admin, str(parsed.host), int(parsed.port or 5432))


@pytest.fixture
def owned_db(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A new role with a password and a new database it owns: ``(role, database)``; both are
    dropped afterwards."""
    suffix = uuid.uuid4().hex[:12]
    role, database = f"owner_{suffix}", f"t_{suffix}"
    cluster.run(
        f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'",
        f'CREATE DATABASE "{database}" OWNER {role}',
    )
    yield role, database
    cluster.run(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', f"DROP ROLE IF EXISTS {role}")


def visage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visage", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def serve(url: str, folder: Path) -> tuple[str, subprocess.Popen[bytes], Path]:
    """Start ``visage serve --db url`` and wait until ``/readyz`` answers 200: its base URL, the
    process and the file holding its stdout and stderr."""
    port = free_port()
    log = folder / f"serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "visage", "serve", "--db", url, "--port", str(port),
             "--no-bootstrap-key"],
            env={**os.environ, "VISAGE_LOG_LEVEL": "warning"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                return base, process, log
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop(process)
    raise AssertionError(f"server not ready:\n{log.read_text(errors='replace')[-4000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_serve_never_shows_the_database_password(
    cluster: Cluster, owned_db: tuple[str, str], tmp_path: Path
) -> None:
    role, database = owned_db
    base, process, log = serve(cluster.url(role, database), tmp_path)
    try:
        assert httpx.get(f"{base}/readyz", timeout=10).json()["status"] == "ready"
    finally:
        stop(process)
    said = log.read_text(errors="replace")
    assert f"store postgresql+psycopg://{role}:***@{cluster.host}:{cluster.port}/" in said, said
    assert PASSWORD not in said, said

    # the error path: nothing listens on the port
    closed = visage(
        "serve", "--db", f"postgresql+psycopg://visage:{PASSWORD}@127.0.0.1:{free_port()}/x",
        "--port", str(free_port()), "--no-bootstrap-key",
    )  # fmt: skip
    assert closed.returncode == 1 and "visage:***@127.0.0.1" in closed.stderr, closed.stderr
    assert PASSWORD not in closed.stdout + closed.stderr and "Traceback" not in closed.stderr
