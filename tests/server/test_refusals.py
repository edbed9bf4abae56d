"""Refused calls are accounted for (issue 11, item 6), over HTTP against a real server.

Each refusal the attacker found unaudited is performed and its event looked up in
``GET /v1/audit``; each test first shows that the allowed form of the call is audited too.
The server runs with ``max_faces=2`` so a real three-face photo is refused for too many faces.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import two_face_photo
from visage.server.auth import SECURITY_LOG_BURST, SECURITY_LOG_RATE

from .conftest import Server, problem, start_server, stop_server

STORES = ("sqlite", "postgresql")  # tests/server/conftest.py: once on each store
JPEG = {"content-type": "image/jpeg"}
SUMMARY_KEYS = {"reason", "detail", "k", "person", "items", "persons", "method", "path"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, store: str | None) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("refusals"), store=store, max_faces="2")
    yield running
    stop_server(running)
    assert "Traceback" not in running.log_tail(100_000), running.log_tail()


@pytest.fixture(scope="module")
def single(server: Server, people_photos: list[Path]) -> tuple[bytes, list[float]]:
    """A real photo holding exactly one face, and that face's embedding."""
    with server.client(server.key(["identify"])) as client:
        for path in people_photos:
            found = client.post("/v1/detect", params={"embeddings": "true"},
                                content=path.read_bytes(), headers=JPEG)
            if found.status_code == 200 and len(found.json()["faces"]) == 1:
                return path.read_bytes(), found.json()["faces"][0]["embedding"]
    raise AssertionError("no single-face photo")


@pytest.fixture
def setup(server: Server) -> Iterator[tuple[httpx.Client, str, str]]:
    """A client whose key may identify and enroll in a fresh collection, its key id and the
    collection."""
    name = f"c-{uuid.uuid4().hex[:10]}"
    with server.client(server.admin) as admin:
        assert admin.post("/v1/collections", json={"name": name}).status_code == 201
    token = server.key(["identify", "enroll"], [name])
    with server.client(token) as client:
        yield client, token.split(".")[0], name


READS = {"audit.read", "person.read", "person.list"}
"""Audited reads of personal data (this test's own looks at the log and the person among them)."""


def events_since(server: Server, seq: int) -> dict[int, dict[str, Any]]:
    """The events after ``seq`` but the audited reads: what the calls under test wrote."""
    with server.client(server.admin) as admin:
        items = admin.get("/v1/audit", params={"after": seq, "limit": 1000}).json()["items"]
    return {e["seq"]: e for e in items if e["action"] not in READS}


def head(server: Server) -> int:
    with server.client(server.admin) as admin:
        return int(admin.get("/v1/audit/verify").json()["events"])


def assert_refusal(event: dict[str, Any], action: str, actor: str, reason: str) -> None:
    """The refusal names who, what and why, and holds nothing biometric."""
    assert (event["action"], event["actor"], event["summary"]["reason"]) == (action, actor, reason)
    assert set(event["summary"]) <= SUMMARY_KEYS, event["summary"]
    assert len(json.dumps(event)) < 2000, "no embedding, no image bytes"


def person(client: httpx.Client, collection: str, *, consent: bool) -> str:
    pid = str(client.post(f"/v1/collections/{collection}/persons",
                          json={"display_name": "Ada"}).json()["id"])
    if consent:
        granted = client.post(f"/v1/collections/{collection}/persons/{pid}/consents",
                              json={"basis": "consent", "granted_by": "Ada"})
        assert granted.status_code == 201, granted.text
    return pid


def test_identify_refusing_every_face_for_min_quality_is_audited(
    server: Server, setup: tuple[httpx.Client, str, str], single: tuple[bytes, list[float]]
) -> None:
    client, actor, collection = setup
    photo, _ = single
    start = head(server)
    url = f"/v1/collections/{collection}/identify"
    allowed = client.post(url, params={"purpose": "door"}, content=photo, headers=JPEG).json()
    assert events_since(server, start)[allowed["faces"][0]["audit_seq"]]["action"] == "identify"
    refused = client.post(url, params={"purpose": "door", "min_quality": 1.0},
                          content=photo, headers=JPEG)
    assert refused.status_code == 200
    face = refused.json()["faces"][0]
    assert "below min_quality 1.0" in face["skipped"] and face["audit_seq"] is not None
    event = events_since(server, start)[face["audit_seq"]]
    assert_refusal(event, "identify.refused", actor, "PoorQuality")
    assert event["purpose"] == "door" and "below min_quality" in event["summary"]["detail"]


def test_verify_against_a_person_without_consent_is_audited(
    server: Server, setup: tuple[httpx.Client, str, str], single: tuple[bytes, list[float]]
) -> None:
    client, actor, collection = setup
    photo, vector = single
    start = head(server)
    ada = person(client, collection, consent=True)
    enrolled = client.post(f"/v1/collections/{collection}/persons/{ada}/faces",
                           json={"embedding": vector})
    assert enrolled.status_code == 201, enrolled.text
    params = {"collection": collection, "person": ada, "purpose": "check"}
    allowed = client.post("/v1/verify", params=params, content=photo, headers=JPEG).json()
    assert events_since(server, start)[allowed["audit_seq"]]["action"] == "verify"
    bob = person(client, collection, consent=False)
    refused = problem(client.post("/v1/verify", params={**params, "person": bob},
                                  content=photo, headers=JPEG), 409)
    event = events_since(server, start)[int(str(refused["audit_seq"]))]
    assert_refusal(event, "verify.refused", actor, "ConsentError")
    assert event["summary"]["person"] == bob and event["purpose"] == "check"


def test_json_enrollment_without_consent_is_audited_single_and_bulk(
    server: Server, setup: tuple[httpx.Client, str, str], single: tuple[bytes, list[float]]
) -> None:
    client, actor, collection = setup
    _, vector = single
    start = head(server)
    base = f"/v1/collections/{collection}"
    ada = person(client, collection, consent=True)
    assert client.post(f"{base}/persons/{ada}/faces", json={"embedding": vector}).status_code == 201
    assert "enroll" in [e["action"] for e in events_since(server, start).values()]
    bob = person(client, collection, consent=False)
    one = problem(client.post(f"{base}/persons/{bob}/faces", json={"embedding": vector}), 409)
    many = problem(client.post(f"{base}/faces/bulk", json={"items": [
        {"person": ada, "embedding": vector}, {"person": bob, "embedding": vector},
    ]}), 409)
    events = events_since(server, start)
    assert_refusal(events[int(str(one["audit_seq"]))], "enroll.refused", actor, "ConsentError")
    bulk = events[int(str(many["audit_seq"]))]
    assert_refusal(bulk, "enroll.refused", actor, "ConsentError")
    assert bulk["summary"]["items"] == 2 and bob in bulk["summary"]["persons"]


def test_too_many_faces_is_audited_for_detect_and_identify(
    server: Server, setup: tuple[httpx.Client, str, str], single: tuple[bytes, list[float]]
) -> None:
    client, actor, collection = setup
    photo, vector = single
    start = head(server)
    allowed = client.post("/v1/detect", params={"purpose": "qa"}, content=photo, headers=JPEG)
    assert events_since(server, start)[allowed.json()["audit_seq"]]["action"] == "detect"
    face = Image.open(io.BytesIO(photo)).convert("RGB")
    crowd = Image.new("RGB", (face.width * 3, face.height))
    for i in range(3):
        crowd.paste(face, (i * face.width, 0))
    buffer = io.BytesIO()
    crowd.save(buffer, "JPEG", quality=95)
    detect = problem(client.post("/v1/detect", params={"purpose": "qa"},
                                 content=buffer.getvalue(), headers=JPEG), 422)
    identify = problem(client.post(f"/v1/collections/{collection}/identify",
                                   params={"purpose": "door"},
                                   json={"embeddings": [vector, vector, vector]}), 422)
    events = events_since(server, start)
    assert_refusal(events[int(str(detect["audit_seq"]))], "detect.refused", actor, "TooManyFaces")
    found = events[int(str(identify["audit_seq"]))]
    assert_refusal(found, "identify.refused", actor, "TooManyFaces")
    assert found["collection"] == collection and found["purpose"] == "door"


def test_forbidden_is_audited_and_unauthorized_floods_a_rate_limited_log_not_the_chain(
    server: Server, setup: tuple[httpx.Client, str, str], single: tuple[bytes, list[float]]
) -> None:
    _, _, collection = setup
    photo, _ = single
    reader = server.key(["identify"], [collection])
    start = head(server)
    with server.client(reader) as client:
        refused = problem(client.post(f"/v1/collections/{collection}/persons",
                                      json={"display_name": "Eve"}), 403)
    event = events_since(server, start)[int(str(refused["audit_seq"]))]
    assert (event["action"], event["actor"]) == ("auth.forbidden", reader.split(".")[0])
    assert "lacks the 'enroll' scope" in event["summary"]["detail"]
    assert event["collection"] == collection and event["summary"]["method"] == "POST"

    before, started = head(server), time.monotonic()
    # From four addresses, 15 each: under each one's failure limit, so every answer is a 401
    # (one address would be throttled with 429s: test_security.py).
    for n in range(4):
        with server.client("vk123.not-a-secret", address=f"127.0.0.{10 + n}") as bad:
            for _ in range(15):
                problem(bad.post("/v1/detect", content=photo, headers=JPEG), 401)
    time.sleep(1.0 / SECURITY_LOG_RATE + 0.2)  # a line's worth refills
    with server.client("vk123.not-a-secret", address="127.0.0.14") as bad:
        problem(bad.post("/v1/detect", content=photo, headers=JPEG), 401)
    took = time.monotonic() - started
    assert head(server) == before, "401s never reach the audit chain"
    lines = [x for x in server.log_tail(1_000_000).splitlines() if x.startswith("401 POST /v1/detect")]
    assert lines and "token claims key vk123" in lines[0] and "not-a-secret" not in "\n".join(lines)
    most = SECURITY_LOG_BURST + math.ceil(took * SECURITY_LOG_RATE)  # however slow the flood
    assert len(lines) <= most, f"a flood of 61 bad keys in {took:.1f} s wrote {len(lines)} lines"
    counts = [re.search(r"; (\d+) more refused authentications not logged", x) for x in lines]
    assert counts[-1] is not None, lines[-1]  # the line after the quiet names what it skipped
    assert len(lines) + sum(int(c.group(1)) for c in counts if c) == 61, "each logged or counted"


def test_enrollment_checks_person_then_consent_then_photo(
    server: Server, setup: tuple[httpx.Client, str, str], people_photos: list[Path],
    tmp_path: Path,
) -> None:
    """A two-face photo is refused as ambiguous only for a consented person: for nobody it is a
    404 (and no refusal event naming nobody), without consent it is the audited no-consent."""
    client, actor, collection = setup
    group = two_face_photo(people_photos[0], people_photos[-1], tmp_path / "two.jpg").read_bytes()
    base = f"/v1/collections/{collection}/persons"
    start = head(server)
    ada = person(client, collection, consent=True)
    ambiguous = problem(client.post(f"{base}/{ada}/faces", content=group, headers=JPEG), 422)
    assert "2 faces found" in str(ambiguous["detail"]), ambiguous
    assert_refusal(events_since(server, start)[int(str(ambiguous["audit_seq"]))],
                   "enroll.refused", actor, "AmbiguousFace")

    before = head(server)
    nobody = problem(client.post(f"{base}/Nobody/faces", content=group, headers=JPEG), 404)
    assert "Nobody" in str(nobody["detail"]), nobody
    assert head(server) == before, "no enroll.refused event for a person who does not exist"

    bob = person(client, collection, consent=False)
    refused = problem(client.post(f"{base}/{bob}/faces", content=group, headers=JPEG), 409)
    assert "no valid consent" in str(refused["detail"]), refused
    event = events_since(server, start)[int(str(refused["audit_seq"]))]
    assert_refusal(event, "enroll.refused", actor, "ConsentError")
    assert event["summary"]["person"] == bob
