"""``visage serve`` and the gallery on a real PostgreSQL server (the throw-away cluster of the
gallery tests): the start-up output never shows the database password (issue 18, item 7); the
service runs as a role with only the grants docs/gallery.md documents, the schema changed only
by the owner with ``visage migrate`` (item 14)."""

from __future__ import annotations

import os
import re
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

from tests.gallery.synthetic import CALIBRATION, MODEL, consented_person, near, unit_vectors
from visage.errors import StorageError
from visage.gallery import EmbeddingItem, Gallery
from visage.store import open_engine

from ..conftest import stop_process
from .conftest import free_port

PASSWORD = "s3cretpw"
DOCS = Path(__file__).parents[2] / "docs" / "gallery.md"


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
def cluster(pg_server: str) -> Cluster:
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
    stop_process(process)
    raise AssertionError(f"server not ready:\n{log.read_text(errors='replace')[-4000:]}")



def test_serve_never_shows_the_database_password(
    cluster: Cluster, owned_db: tuple[str, str], tmp_path: Path
) -> None:
    role, database = owned_db
    base, process, log = serve(cluster.url(role, database), tmp_path)
    try:
        assert httpx.get(f"{base}/readyz", timeout=10).json()["status"] == "ready"
    finally:
        stop_process(process)
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


@pytest.fixture
def service_role(cluster: Cluster, owned_db: tuple[str, str]) -> Iterator[str]:
    """A login role with no rights of its own (dropped afterwards, with what it was granted)."""
    role = f"app_{uuid.uuid4().hex[:12]}"
    cluster.run(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    yield role
    cluster.run(f"DROP OWNED BY {role}", database=owned_db[1])
    cluster.run(f"DROP ROLE {role}")


def documented_grants(role: str, database: str) -> list[str]:
    """The SQL block of docs/gallery.md's "PostgreSQL roles", for ``role`` on ``database``."""
    section = DOCS.read_text(encoding="utf-8").split("## PostgreSQL roles", 1)[1]
    block = re.search(r"```sql\n(.*?)```", section, re.DOTALL)
    assert block is not None, "docs/gallery.md lost its grants"
    sql = (
        block.group(1)
        .replace("visage_app", role)
        .replace("DATABASE visage ", f'DATABASE "{database}" ')
    )
    return [line for line in sql.splitlines() if line.strip()]


def grant_documented(cluster: Cluster, role: str, database: str) -> None:
    cluster.run(*documented_grants(role, database), database=database)


def refused(url: str, statement: str) -> str | None:
    """The SQLSTATE PostgreSQL answered ``statement`` with as the URL's role (None: it ran)."""
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def test_the_service_runs_with_only_the_documented_grants(
    cluster: Cluster, owned_db: tuple[str, str], service_role: str, tmp_path: Path
) -> None:
    owner, database = owned_db
    first = visage("migrate", "--db", cluster.url(owner, database))
    assert first.returncode == 0, first.stderr
    assert "migrated from an empty database to" in first.stdout and PASSWORD not in first.stdout
    again = visage("migrate", "--db", cluster.url(owner, database), "--json")
    assert again.returncode == 0 and '"applied": []' in again.stdout, again.stdout  # idempotent

    app = cluster.url(service_role, database)
    grant_documented(cluster, service_role, database)
    assert refused(app, "CREATE TABLE intruder (x int)") == "42501"  # no DDL rights at all

    with Gallery(app, calibrations=[CALIBRATION], actor="svc") as g:
        g.create_collection("people", model_id=MODEL)
        vectors = unit_vectors(3, seed=1)
        ids = [consented_person(g, name) for name in ("Ada", "Bo", "Cy")]
        g.enroll_many("people", [EmbeddingItem(p, v) for p, v in zip(ids, vectors, strict=True)])
        found = g.identify("people", near(vectors[1], 0.02, seed=2))
        assert found.best is not None and found.best.person_id == ids[1]
        assert g.revoke_consent("people", ids[2], reason="asked") == 1
        assert g.delete_person("people", ids[0], purpose="erasure request") == 1
        assert g.identify("people", vectors[0]).unknown
        assert g.verify_audit().ok
        g.create_collection("gone", model_id=MODEL)
        g.enroll_many("gone", [EmbeddingItem(consented_person(g, "Di", "gone"), vectors[0])])
        g.delete_collection("gone")
        report = g.verify_audit()
        assert report.ok, report.describe()

    made = visage("keys", "create", "--db", app, "--scopes", "admin")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    base, process, log = serve(app, tmp_path)
    try:
        assert httpx.get(f"{base}/readyz", timeout=10).json()["status"] == "ready"
        auth = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{base}/v1/collections", json={"name": "web"}, headers=auth)
        assert created.status_code == 201, created.text
        listed = httpx.get(f"{base}/v1/collections", headers=auth, timeout=10)
        assert listed.status_code == 200 and "web" in listed.text, listed.text
    finally:
        stop_process(process)
    assert "Traceback" not in log.read_text(errors="replace")

    # the audit chain is append-only for this role: PostgreSQL itself refuses to edit it
    assert refused(app, "SELECT count(*) FROM audit_event") is None
    assert refused(app, "UPDATE audit_event SET summary = '{}' WHERE seq = 1") == "42501"
    assert refused(app, "DELETE FROM audit_event WHERE seq = 1") == "42501"
    assert refused(app, "UPDATE alembic_version SET version_num = 'x'") == "42501"
    with Gallery(app, calibrations=[CALIBRATION], actor="svc") as g:
        assert g.verify_audit().ok


def test_a_store_behind_the_code_names_visage_migrate(
    cluster: Cluster, owned_db: tuple[str, str], service_role: str
) -> None:
    owner, database = owned_db
    assert visage("migrate", "--db", cluster.url(owner, database)).returncode == 0
    cluster.run(  # back to the previous version's schema, as its owner would have left it
        "DROP INDEX ix_audit_event_at",
        "DROP INDEX ix_audit_event_actor",
        "ALTER TABLE collection DROP COLUMN open_set",
        "ALTER TABLE api_key DROP COLUMN expires_at",
        "ALTER TABLE api_key DROP COLUMN devices",
        "ALTER TABLE edge_event DROP CONSTRAINT uq_edge_event_device_key",
        "ALTER TABLE edge_event ADD CONSTRAINT edge_event_key_id_event_key_key"
        " UNIQUE (key_id, event_key)",
        "UPDATE alembic_version SET version_num = '0005_target_fpir'",
        database=database,
    )
    grant_documented(cluster, service_role, database)
    app = cluster.url(service_role, database)

    with pytest.raises(StorageError) as info:
        open_engine(app)
    message = str(info.value)
    assert "visage migrate" in message and "0005_target_fpir" in message, message
    assert (
        "must be owner of table api_key" in message
        and PASSWORD not in message
        and "\n" not in message
    )
    cli = visage("keys", "list", "--db", app)
    assert cli.returncode == 1 and "visage migrate" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr and len(cli.stderr.strip().splitlines()) == 1

    done = visage("migrate", "--db", cluster.url(owner, database))
    assert done.returncode == 0, done.stderr
    assert "migrated from 0005_target_fpir to 0008_audit_filter_indexes" in done.stdout, done.stdout
    with Gallery(app, calibrations=[CALIBRATION], actor="svc") as g:  # now current: it opens
        g.create_collection("people", model_id=MODEL)
        assert g.verify_audit().ok
