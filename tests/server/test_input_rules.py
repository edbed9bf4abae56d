"""Issue 11's input attacks over real HTTP: far-future consent times, embeddings whose float32
norm overflows, names with hidden characters, and collection names no key could be scoped to."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from tests.conftest import pg_database
from visage.cli import app
from visage.gallery import Gallery

from .conftest import Server, problem, start_server, stop_server

SQL_WORDS = ("SELECT", "INSERT", "[SQL", "[parameters", "sqlite3.", "psycopg")


def _person(server: Server, collection: str, name: str = "Ada", *, consent: bool = True) -> str:
    base = f"/v1/collections/{collection}/persons"
    with server.client(server.admin) as client:
        created = client.post(base, json={"display_name": name})
        assert created.status_code == 201, created.text
        person = str(created.json()["id"])
        if consent:
            granted = client.post(
                f"{base}/{person}/consents", json={"basis": "consent", "granted_by": name}
            )
            assert granted.status_code == 201, granted.text
    return person


# ---------------------------------------------------------------- item 9: far-future consent


def test_a_far_future_granted_at_is_a_422_without_sql(server: Server, collection: str) -> None:
    person = _person(server, collection, consent=False)
    url = f"/v1/collections/{collection}/persons/{person}/consents"
    with server.client(server.admin) as client:
        # Positive control: an ordinary offset is accepted and stored in UTC.
        ok = client.post(url, json={"basis": "consent", "granted_by": "Ada",
                                    "granted_at": "2026-01-01T00:00:00-05:00"})
        assert ok.status_code == 201 and ok.json()["granted_at"].startswith("2026-01-01T05:00")
        for field in ("granted_at", "expires_at"):
            body = {"basis": "consent", "granted_by": "Ada", field: "9999-12-31T23:59:59-23:59"}
            doc = problem(client.post(url, json=body), 422)
            assert "out of range" in str(doc["detail"]) and field in str(doc["detail"])
            assert not any(word in str(doc) for word in SQL_WORDS), doc
        assert len(client.get(url).json()["items"]) == 1


@pytest.fixture
def broken_server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(tmp_path / "broken")
    yield running
    stop_server(running)


def test_a_store_failure_answers_503_and_keeps_the_sql_in_the_log(broken_server: Server) -> None:
    """A real driver error (the consent table gone) reaches the generic DB-error handler."""
    with broken_server.client(broken_server.admin) as client:
        assert client.post("/v1/collections", json={"name": "shop"}).status_code == 201
        assert client.post("/v1/collections/shop/persons",
                           json={"display_name": "Ada"}).status_code == 201
        with sqlite3.connect(broken_server.db) as conn:
            conn.execute("DROP TABLE consent")
        doc = problem(client.post("/v1/collections/shop/persons", json={"display_name": "Bo"}),
                      503)
    assert not any(word in str(doc) for word in SQL_WORDS), doc
    assert "consent" not in str(doc["detail"]) and "server log" in str(doc["detail"])
    log = broken_server.log_tail(100_000)
    assert "no such table: consent" in log and "SELECT" in log  # the details are kept, privately


# ---------------------------------------------------------------- item 10: float32 overflow


def _unit_norms(db: Path, person: str) -> list[float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT embedding FROM template WHERE person_id = ?", (person,))
        return [float(np.linalg.norm(np.frombuffer(r[0], "<f4"))) for r in rows]


@pytest.mark.parametrize("value", [3e38, 1e-45])
def test_extreme_embeddings_enroll_as_unit_templates(
    server: Server, collection: str, value: float
) -> None:
    person = _person(server, collection)
    base = f"/v1/collections/{collection}"
    with server.client(server.admin) as client:
        zero = client.post(f"{base}/persons/{person}/faces", json={"embedding": [0.0] * 128})
        assert "non-zero" in str(problem(zero, 422)["detail"])  # the check does refuse zeros
        single = client.post(f"{base}/persons/{person}/faces", json={"embedding": [value] * 128})
        assert single.status_code == 201, single.text
        other = _person(server, collection, "Bo")
        bulk = client.post(f"{base}/faces/bulk", json={"items": [
            {"person": other, "embedding": [value] * 127 + [value / 2]}]})
        assert bulk.status_code == 200 and bulk.json()["enrolled"] == 1, bulk.text
        for who in (person, other):
            assert _unit_norms(server.db, who) == pytest.approx([1.0], abs=1e-5)
        # A zero template would be sqrt(2) from every probe; a unit one is the probe's twin.
        found = client.post(f"{base}/identify", params={"purpose": "test"},
                            json={"embeddings": [[value] * 128, [1.0] * 128]})
        assert found.status_code == 200, found.text
        for face in found.json()["faces"]:
            best = face["candidates"][0]
            assert best["person_id"] == person and best["distance"] < 1e-3 and not face["unknown"]
        grouped = client.post("/v1/group", params={"purpose": "test"}, json={"embeddings": [[value] * 128, [1.0] * 128]})
        assert grouped.status_code == 200 and len(grouped.json()["groups"]) == 1, grouped.text


# ---------------------------------------------------------------- item 15: hidden characters


@pytest.mark.parametrize(
    ("field", "text", "code"),
    [
        ("display_name", "Ada\u202eevil.exe", "U+202E"),  # right-to-left override
        ("display_name", "Ada\u200b", "U+200B"),  # zero-width space
        ("display_name", "Ada\x00", "U+0000"),
        ("display_name", "Ada\u00a0Lovelace", "U+00A0"),  # no-break space
        ("external_id", "E-17\u2066", "U+2066"),  # left-to-right isolate
        ("external_id", "E-17\n", "U+000A"),
    ],
)
def test_names_with_hidden_characters_are_refused(
    server: Server, collection: str, field: str, text: str, code: str
) -> None:
    base = f"/v1/collections/{collection}/persons"
    with server.client(server.admin) as client:
        body = {"display_name": "Ada", field: text}
        doc = problem(client.post(base, json=body), 422)
        assert code in str(doc["detail"]), doc
        person = _person(server, collection)
        doc = problem(client.patch(f"{base}/{person}", json={field: text}), 422)
        assert code in str(doc["detail"]), doc
        assert client.get(f"{base}/{person}").json()["display_name"] == "Ada"


def test_names_are_stored_nfc(server: Server, collection: str) -> None:
    base = f"/v1/collections/{collection}/persons"
    with server.client(server.admin) as client:
        made = client.post(base, json={"display_name": "Zoe\u0308 Ba", "external_id": "zoe\u0308"})
        assert made.status_code == 201, made.text
        assert made.json()["display_name"] == "Zo\u00eb Ba"
        assert client.get(f"{base}/zo\u00eb").json()["id"] == made.json()["id"]
        taken = client.post(base, json={"display_name": "Other", "external_id": "zo\u00eb"})
        problem(taken, 409)  # the decomposed and composed spellings are one id


# ---------------------------------------------------------------- item 16: collection names


def test_one_collection_name_rule_for_cli_http_and_keys(
    server: Server, tmp_path: Path, people_photos: list[Path]
) -> None:
    runner = CliRunner()
    folder = tmp_path / "people" / "Ada"
    folder.mkdir(parents=True)
    shutil.copy(people_photos[0], folder / "ada.jpg")  # enroll skips a folder without photos
    enroll = ["enroll", str(tmp_path / "people"), "--basis", "consent", "--granted-by", "t",
              "--db", str(server.db), "--json"]
    good = f"front-door.{uuid.uuid4().hex[:6]}"
    made = runner.invoke(app, [*enroll, "-c", good])
    assert made.exit_code == 0, made.output  # positive control: the CLI creates a valid name
    token = server.key(["identify"], [good])  # ... which a key can be scoped to
    with server.client(token) as client:
        assert client.get(f"/v1/collections/{good}").status_code == 200

    for bad in ("front door", "a,b", "*", "-x", "ga\u200bte", "x" * 201):
        result = runner.invoke(app, [*enroll, "-c", bad])
        assert result.exit_code == 1 and "invalid collection name" in result.stderr, result.output
        assert "Traceback" not in result.output
        keyed = runner.invoke(app, ["keys", "create", "--scopes", "identify",
                                    "--collections", bad, "--db", str(server.db)])
        if bad not in ("*", "a,b"):  # '*' is every collection; 'a,b' two valid ones
            assert keyed.exit_code == 1 and "invalid collection name" in keyed.stderr
        with server.client(server.admin) as client:
            doc = problem(client.post("/v1/collections", json={"name": bad}), 422)
            assert doc["type"] == "urn:visage:problem:validation-error"
            names = [c["name"] for c in client.get("/v1/collections").json()["items"]]
        assert bad not in names


def test_every_503_names_what_is_unavailable(
    tmp_path: Path, pg_server: str, people_photos: list[Path]
) -> None:
    """The server's 503s, each a one-line problem with its own type and no SQL: the store
    gone (``not-ready`` from /readyz, ``storage-unavailable`` from a route, the key lookup
    included), and an edge route on a store with no signing key configured."""
    with pg_database(pg_server) as url:
        unsigned = start_server(tmp_path / "unsigned", store=url, edge_signing_key="")
        try:
            device = unsigned.key(["device"], ["*"])
            with unsigned.client(device) as client:
                doc = problem(client.get("/v1/edge/public-key"), 503)
            assert doc["type"] == "urn:visage:problem:storage-unavailable"
            assert "VISAGE_EDGE_SIGNING_KEY" in str(doc["detail"])
            # and the start said so, rather than leaving it to the first device to find out
            assert "edge routes answer 503 until the snapshot signing key is set" in (
                unsigned.log_tail(100_000)
            )
        finally:
            stop_server(unsigned)
    with pg_database(pg_server) as url:
        server = start_server(tmp_path / "gone", store=url)
        try:
            with server.client(server.admin) as client:  # the control: all is well
                assert httpx.get(f"{server.url}/readyz").status_code == 200
                assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
            admin = url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
            with psycopg.connect(admin + "/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            ready = problem(httpx.get(f"{server.url}/readyz"), 503)
            assert ready["type"] == "urn:visage:problem:not-ready", ready
            with server.client(server.admin) as client:
                for answer in (
                    client.get("/v1/collections"),
                    client.post("/v1/detect", content=people_photos[0].read_bytes(),
                                headers={"content-type": "image/jpeg"}),
                ):  # fmt: skip
                    doc = problem(answer, 503)
                    assert doc["type"] == "urn:visage:problem:storage-unavailable", doc
                    assert not any(word in str(doc) for word in SQL_WORDS), doc
            assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, not ready
        finally:
            stop_server(server)


def test_a_collection_of_a_model_without_calibration_is_503_model_unavailable(
    server: Server,
) -> None:
    """The last 503 (issue 19 item 11): a collection made, through the library, for a model
    this server holds no calibration for. identify cannot choose a threshold for it, so it is
    ``model-unavailable`` naming the model, not a guess; a collection of the shipped model on
    the same server still answers (the control)."""
    with Gallery(server.store, actor="library") as g:
        g.create_collection("alien", model_id="mystery-v9", dim=128)
        g.create_collection("native", model_id="dlib_resnet_v1", dim=128)
    probe = {"embeddings": [[1 / 128**0.5] * 128]}
    with server.client(server.admin) as client:
        fine = client.post("/v1/collections/native/identify", params={"purpose": "t"}, json=probe)
        assert fine.status_code == 200, fine.text
        doc = problem(
            client.post("/v1/collections/alien/identify", params={"purpose": "t"}, json=probe), 503
        )
    assert doc["type"] == "urn:visage:problem:model-unavailable", doc
    assert "mystery-v9" in str(doc["detail"]) and not any(w in str(doc) for w in SQL_WORDS), doc
