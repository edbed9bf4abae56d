"""Photo enrollments the gallery refuses (issue 19, item 4), over HTTP against a real server.

A consented person first gets a template from a clear photo (the control: enrollment stores a
template and writes ``enroll``). Then a blurred copy of the same photo, a plain image and two
photos side by side are each answered with their 422 problem, write ``enroll.refused`` naming
who, for whom and why, and leave the person's templates as they were.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageFilter

from tests.conftest import two_face_photo

from .conftest import Server, problem
from .test_refusals import JPEG, assert_refusal, events_since, head

STORES = ("sqlite", "postgresql")  # tests/server/conftest.py: once on each store
CLEAR = "Al_Sharpton/Al_Sharpton_0001"
"""Passes the quality gate; blurred (radius 2) it fails on sharpness alone (tests/test_quality.py)."""
OTHER = "Angelina_Jolie/Angelina_Jolie_0002"


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def templates(client: httpx.Client, base: str) -> list[str]:
    listed = client.get(f"{base}/faces")
    assert listed.status_code == 200, listed.text
    return [str(t["source_sha256"]) for t in listed.json()["items"]]


@pytest.fixture
def enrolled(
    server: Server, collection: str, faces_dir: Path
) -> Iterator[tuple[httpx.Client, str, str]]:
    """A client with an enroll key for ``collection``, its key id and a consented person's URL,
    holding one template from :data:`CLEAR` (enrolled and audited: the control)."""
    token = server.key(["enroll"], [collection])
    with server.client(token) as client:
        made = client.post(f"/v1/collections/{collection}/persons", json={"display_name": "Al"})
        assert made.status_code == 201, made.text
        base = f"/v1/collections/{collection}/persons/{made.json()['id']}"
        granted = client.post(f"{base}/consents", json={"basis": "consent", "granted_by": "Al"})
        assert granted.status_code == 201, granted.text
        start = head(server)
        photo = (faces_dir / "people" / f"{CLEAR}.jpg").read_bytes()
        created = client.post(f"{base}/faces", content=photo, headers=JPEG)
        assert created.status_code == 201, created.text
        assert templates(client, base) == [hashlib.sha256(photo).hexdigest()]
        assert [e["action"] for e in events_since(server, start).values()] == ["enroll"]
        yield client, token.split(".")[0], base


def refused(
    server: Server, enrolled: tuple[httpx.Client, str, str], photo: bytes, slug: str
) -> tuple[dict[str, object], dict[str, object]]:
    """Enroll ``photo``; assert its 422 ``slug`` problem, its one ``enroll.refused`` event and that
    the person's templates are unchanged; return the problem and the event."""
    client, actor, base = enrolled
    before, start = templates(client, base), head(server)
    answer = client.post(f"{base}/faces", content=photo, headers=JPEG)
    body = problem(answer, 422)
    assert body["type"] == f"urn:visage:problem:{slug}", body
    events = events_since(server, start)
    assert list(events) == [body["audit_seq"]], events
    event = events[int(str(body["audit_seq"]))]
    reason = {"poor-quality": "PoorQuality", "no-face": "NoFace", "ambiguous-face": "AmbiguousFace"}
    assert_refusal(event, "enroll.refused", actor, reason[slug])
    assert event["summary"]["person"] == base.rsplit("/", 1)[1]
    assert event["summary"]["detail"] == body["detail"]
    assert templates(client, base) == before, "a refused photo stores no template"
    assert hashlib.sha256(photo).hexdigest() not in before
    return body, event


def test_a_blurred_photo_is_refused_for_quality(
    server: Server, enrolled: tuple[httpx.Client, str, str], faces_dir: Path
) -> None:
    clear = Image.open(faces_dir / "people" / f"{CLEAR}.jpg")
    body, _ = refused(server, enrolled, jpeg(clear.filter(ImageFilter.GaussianBlur(2))),
                      "poor-quality")
    reasons = body["reasons"]
    assert isinstance(reasons, list) and len(reasons) == 1, reasons
    assert str(reasons[0]).startswith("blurred: sharpness "), reasons
    assert "face refused by the quality gate: blurred" in str(body["detail"])


def test_a_photo_without_a_face_is_refused(
    server: Server, enrolled: tuple[httpx.Client, str, str]
) -> None:
    body, _ = refused(server, enrolled, jpeg(Image.new("RGB", (250, 250), (120, 130, 140))),
                      "no-face")
    assert "no face found" in str(body["detail"]) and "reasons" not in body


def test_a_photo_with_two_faces_is_refused_without_a_pick(
    server: Server, enrolled: tuple[httpx.Client, str, str], faces_dir: Path, tmp_path: Path
) -> None:
    people = faces_dir / "people"
    pair = two_face_photo(people / f"{CLEAR}.jpg", people / f"{OTHER}.jpg", tmp_path / "two.jpg")
    body, _ = refused(server, enrolled, pair.read_bytes(), "ambiguous-face")
    assert "2 faces found; pick one" in str(body["detail"]), body
