"""The web console in a real browser: Playwright driving Debian's Chromium against a real
``visage serve`` on a loopback port (one server and one browser for the module).

The end-to-end test walks what an operator does: sign in, create a collection, add a person,
see enrollment held back until consent, grant it, enroll by upload (one photo refused for
quality, one with two faces needing a pick), identify a probe (match) and a distractor
(unknown), revoke consent, the same probe now unknown, and the audit page showing every step
on a verified chain. Each page is saved to ``docs/ui/`` as it is reached.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.gallery.synthetic import write_export
from tests.server.conftest import Server
from tests.server.test_eval import identification_lists, small_protocol
from visage.gallery import Gallery

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


def write_y4m(photo: Path, path: Path, frames: int = 10) -> Path:
    """A y4m video (I420, 4:2:0) of ``photo`` still, for Chromium's fake camera."""
    image = Image.open(photo).convert("RGB").resize((320, 320))
    rgb = np.asarray(image, dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = (b - y) * 0.564 + 128
    v = (r - y) * 0.713 + 128
    planes = [np.clip(p, 0, 255).astype(np.uint8) for p in (y, u[::2, ::2], v[::2, ::2])]
    frame = b"FRAME\n" + b"".join(p.tobytes() for p in planes)
    path.write_bytes(b"YUV4MPEG2 W320 H320 F1:1 Ip A1:1 C420jpeg\n" + frame * frames)
    return path


@pytest.fixture(scope="module")
def person_photos(people_photos: list[Path]) -> list[Path]:
    """Three photos of one person (the first with at least three)."""
    by_person: dict[str, list[Path]] = {}
    for photo in people_photos:
        by_person.setdefault(photo.parent.name, []).append(photo)
    return next(p for p in by_person.values() if len(p) >= 3)[:3]


@pytest.fixture(scope="module")
def browser(
    tmp_path_factory: pytest.TempPathFactory, person_photos: list[Path]
) -> Iterator[object]:
    video = write_y4m(person_photos[1], tmp_path_factory.mktemp("camera") / "face.y4m")
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={video}",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: object, server: Server, shots: Path) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1000, "height": 800})  # type: ignore[attr-defined]
    opened = context.new_page()
    opened.shots = shots
    dialogs: list[str] = []
    opened.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    opened.dialogs = dialogs
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.csp_errors = errors
    yield opened
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: docs/ui/ with ``VISAGE_SCREENSHOTS=1`` (to refresh the committed
    ones), else a temporary folder, so a test run leaves the work tree as it was."""
    if os.environ.get("VISAGE_SCREENSHOTS") == "1":
        return SCREENSHOTS
    return tmp_path_factory.mktemp("ui")


def snap(page: object, name: str) -> None:
    """The page as a PNG (1000 px wide, palette-quantized to stay small); see :func:`shots`."""
    folder: Path = page.shots  # type: ignore[attr-defined]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)  # type: ignore[attr-defined]
    image = Image.open(target).convert("RGB")
    image.crop((0, 0, image.width, min(image.height, 1400))).quantize(64).save(
        target, optimize=True
    )


def sign_in(page: object, server: Server, token: str) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    page.get_by_label("API key").fill(token)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
    page.get_by_role("heading", name="Collections").wait_for()  # type: ignore[attr-defined]


def two_faces(first: Path, second: Path, target: Path) -> Path:
    left, right = Image.open(first).convert("RGB"), Image.open(second).convert("RGB")
    both = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    both.save(target, quality=95)
    return target


def blurred(photo: Path, target: Path) -> Path:
    """A face the detector finds but the quality gate refuses (sharpness ~3 < 6)."""
    Image.open(photo).resize((400, 400)).filter(ImageFilter.GaussianBlur(6)).save(target)
    return target


def identify(page: object, collection: str, photo: Path) -> str:
    page.goto(page.url.split("#")[0] + "#/identify")  # type: ignore[attr-defined]
    page.get_by_role("heading", name="Identify").wait_for()  # type: ignore[attr-defined]
    page.get_by_label("Collection").select_option(collection)  # type: ignore[attr-defined]
    page.get_by_label("Purpose (kept in the audit log)").fill("console test")  # type: ignore[attr-defined]
    page.locator("#identify-results").evaluate("n => n.replaceChildren()")  # type: ignore[attr-defined]
    page.get_by_label("Photo").set_input_files(str(photo))  # type: ignore[attr-defined]
    verdict = page.locator("#identify-results .verdict").first  # type: ignore[attr-defined]
    verdict.wait_for(timeout=60_000)
    return str(verdict.inner_text())


def test_an_operator_enrolls_identifies_revokes_and_audits_in_the_browser(
    page: object,
    server: Server,
    person_photos: list[Path],
    distractor_photos: list[Path],
    people_photos: list[Path],
    tmp_path: Path,
) -> None:
    coll = f"ui-{uuid.uuid4().hex[:8]}"
    sign_in(page, server, server.admin)
    snap(page, "collections")
    page.get_by_label("Name", exact=True).fill(coll)
    page.get_by_role("button", name="Create").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=coll))
    threshold = row.locator(".threshold").inner_text()
    with server.client(server.admin) as client:
        stated = client.get(f"/v1/collections/{coll}").json()["operating_point"]
    assert threshold.startswith(f"{stated['threshold']:.3f} ({stated['basis']}"), threshold
    page.get_by_role("link", name=coll).click()
    page.get_by_label("Display name").fill("Ada Example")
    page.get_by_role("button", name="Add person").click()
    page.locator("#person-name").wait_for()
    # Before any consent the page says so and offers no upload.
    assert "no valid consent" in page.locator("#needs-consent").inner_text()
    assert page.locator("#enroll-files").count() == 0
    page.get_by_label("Granted by").fill("Front desk")
    page.get_by_role("button", name="Grant consent").click()
    files = page.locator("#enroll-files")
    files.set_input_files(str(person_photos[0]))
    page.locator(".enrolled").first.wait_for(timeout=60_000)
    files.set_input_files(str(blurred(person_photos[2], tmp_path / "blurred.jpg")))
    refused = page.locator(".result[data-file='blurred.jpg'] .refused")
    refused.wait_for(timeout=60_000)
    assert "blurred" in refused.inner_text(), refused.inner_text()
    other = next(p for p in people_photos if p.parent != person_photos[0].parent)
    files.set_input_files(str(two_faces(person_photos[2], other, tmp_path / "two.jpg")))
    pick = page.locator(".result[data-file='two.jpg'] button.pick")
    pick.first.wait_for(timeout=60_000)
    assert pick.count() == 2
    snap(page, "enroll")
    # Face 0 is the largest; both are the same size here, so pick by position: the left one.
    page.locator(".result[data-file='two.jpg'] button.pick", has_text="Face 0").click()
    page.locator(".result[data-file='two.jpg'] .enrolled").wait_for(timeout=60_000)
    page.get_by_role("button", name="Refresh templates").click()
    page.get_by_role("cell", name="not kept").first.wait_for()
    snap(page, "person")

    match = identify(page, coll, person_photos[1])
    assert match.startswith("Face 0: MATCH Ada Example"), match
    snap(page, "identify")
    unknown = identify(page, coll, distractor_photos[0])
    assert "UNKNOWN" in unknown, unknown

    page.goto(server.url + f"/console/#/c/{coll}")
    page.get_by_role("heading", name=f"Collection {coll}").wait_for()
    page.get_by_role("link", name="Ada Example").click()
    page.get_by_role("button", name="Revoke consent (deletes templates)").click()
    page.locator("#needs-consent").wait_for()
    after = identify(page, coll, person_photos[1])
    assert "UNKNOWN" in after, after

    page.goto(server.url + "/console/#/audit")
    page.get_by_role("heading", name="Audit log").wait_for()
    page.get_by_label("Collection").fill(coll)
    page.get_by_role("button", name="Filter").click()
    page.locator("tr[data-action='consent.revoke']").wait_for()
    page.locator("#chain", has_text="Chain verified").wait_for()  # filled in after the rows
    for action in ("person.create", "consent.grant", "identify", "consent.revoke"):
        assert page.locator(f"tr[data-action='{action}']").count() >= 1, action
    with server.client(server.admin) as client:
        head = client.get("/v1/audit/verify").json()["head"]
    assert len(page.locator("#head").inner_text()) == len(head)
    snap(page, "audit")
    assert not page.dialogs


def test_a_hostile_name_is_shown_as_text_and_runs_nothing(
    page: object, server: Server, collection: str
) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    with server.client(server.admin) as client:
        made = client.post(f"/v1/collections/{collection}/persons", json={"display_name": hostile})
        assert made.status_code == 201, made.text
    sign_in(page, server, server.admin)
    page.goto(server.url + f"/console/#/c/{collection}")
    page.get_by_role("heading", name=f"Collection {collection}").wait_for()
    link = page.get_by_role("link", name=hostile)
    link.wait_for(timeout=5_000)  # the page is listed well within its 1 s budget
    assert link.inner_text() == hostile  # positive control: the name is on the page, literally
    link.click()
    assert page.locator("#person-name").inner_text() == hostile
    assert page.locator("main img").count() == 0
    page.wait_for_timeout(300)
    assert page.dialogs == []


BLOB_URLS = """async (img) => {
  const load = (url) => new Promise((done) => {
    const probe = new Image();
    probe.onload = () => done("loads"); probe.onerror = () => done("revoked"); probe.src = url;
  });
  const canvas = document.createElement("canvas");
  canvas.getContext("2d").drawImage(img, 0, 0);
  const control = await new Promise((done) => canvas.toBlob(done));
  return [await load(URL.createObjectURL(control)), await load(img.src)];
}"""
"""Whether a fresh blob: URL of the thumbnail's pixels loads (the control), and the thumbnail's
own (an image load, as img-src allows blob: where connect-src does not)."""


def enrolled_person(server: Server, photo: Path, *, keep_images: bool) -> tuple[str, str]:
    """A new collection (keeping images or not) with one consented person enrolled from
    ``photo``; its name and the person's id."""
    coll = f"th-{keep_images}-{uuid.uuid4().hex[:6]}".lower()
    with server.client(server.admin) as client:
        made = client.post("/v1/collections", json={"name": coll, "keep_images": keep_images})
        assert made.status_code == 201, made.text
        base = f"/v1/collections/{coll}/persons"
        pid = client.post(base, json={"display_name": "Thumb Person"}).json()["id"]
        grant = {"basis": "consent", "granted_by": "test"}
        assert client.post(f"{base}/{pid}/consents", json=grant).status_code == 201
        enrolled = client.post(f"{base}/{pid}/faces", files={"photo": photo.read_bytes()})
        assert enrolled.status_code == 201, enrolled.text
    return coll, pid


def test_a_person_page_shows_kept_photos_only_where_the_collection_keeps_them(
    page: object, server: Server, person_photos: list[Path]
) -> None:
    """In a ``keep_images`` collection each template's photo loads (fetched with the key, from
    a blob: URL the strict CSP allows, revoked once shown); in a plain one there is no <img>."""
    kept = enrolled_person(server, person_photos[0], keep_images=True)
    plain = enrolled_person(server, person_photos[0], keep_images=False)
    sign_in(page, server, server.admin)
    page.goto(server.url + f"/console/#/c/{kept[0]}/p/{kept[1]}")
    thumb = page.get_by_role("img", name="Photo of template")
    thumb.wait_for()
    page.wait_for_function(
        "() => { const i = document.querySelector('img.thumb'); return i.complete && i.naturalWidth > 0; }"
    )
    with Image.open(person_photos[0]) as original:
        assert thumb.evaluate("i => i.naturalWidth") == original.width
    assert thumb.evaluate("i => i.src").startswith("blob:")
    assert thumb.evaluate(BLOB_URLS) == ["loads", "revoked"]
    snap(page, "person-thumbnails")
    page.goto(server.url + f"/console/#/c/{plain[0]}/p/{plain[1]}")
    page.get_by_role("cell", name="not kept").wait_for()
    assert page.locator("main img").count() == 0
    refused = [e for e in page.csp_errors if "Content Security Policy" in e]  # type: ignore[attr-defined]
    assert not refused, refused


def test_the_console_is_served_with_a_strict_csp_and_no_framing(server: Server) -> None:
    assert "web console at /" in server.log_tail(100_000)  # what `make run` prints
    root = httpx.get(server.url + "/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/console/"
    for path in ("/console/", "/console/console.js", "/console/console.css"):
        response = httpx.get(server.url + path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    html = httpx.get(server.url + "/console/").text
    assert "<script>" not in html and "http" not in html.replace("http-equiv", "")
    assert httpx.get(server.url + "/console/..%2Fapp.py").status_code == 404
    assert httpx.get(server.url + "/healthz").headers["x-frame-options"] == "DENY"


def test_the_keys_page_creates_shows_once_and_revokes(page: object, server: Server) -> None:
    sign_in(page, server, server.admin)
    page.goto(server.url + "/console/#/keys")
    page.get_by_role("heading", name="API keys").wait_for()
    page.locator("#key-name").fill("ui desk")
    page.get_by_label("identify").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret .mono").inner_text()
    assert secret.startswith("vk_")
    assert httpx.get(server.url + "/v1/me", headers={"Authorization": f"Bearer {secret}"}).json()[
        "scopes"
    ] == ["identify"]
    snap(page, "keys")
    key_id = secret.split(".")[0]
    page.get_by_role("button", name=f"Revoke {key_id}").click()
    page.get_by_role("heading", name="API keys").wait_for()
    page.wait_for_function("id => !document.body.innerText.includes('Revoke ' + id)", arg=key_id)
    assert page.locator("#new-secret").count() == 0  # shown once: gone on the next render
    revoked = httpx.get(server.url + "/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert revoked.status_code == 401


def test_what_the_console_offers_follows_the_keys_scopes(page: object, server: Server) -> None:
    sign_in(page, server, server.admin)
    assert page.get_by_role("link", name="Keys").is_visible()  # positive control
    page.get_by_role("button", name="Sign out").click()
    page.locator("#apikey").wait_for()
    assert not page.locator("#nav").is_visible()  # signed out: no menu (CSS once overrode hidden)
    sign_in(page, server, server.key(["identify"], ["nowhere"]))
    assert not page.get_by_role("link", name="Keys").is_visible()
    assert not page.get_by_role("link", name="Audit").is_visible()
    assert not page.get_by_role("link", name="Evaluation").is_visible()
    assert page.get_by_role("button", name="Create").count() == 0


def test_only_an_all_collections_admin_manages_keys(server: Server) -> None:
    body = {"name": "x", "scopes": ["admin"], "collections": ["*"]}
    with server.client(server.admin) as client:
        assert client.post("/v1/keys", json=body).status_code == 201  # positive control
    bound = server.key(["admin"], ["one"])
    with server.client(bound) as client:
        assert client.post("/v1/keys", json=body).status_code == 403
        assert client.get("/v1/keys").status_code == 403



CONTRAST = """() => {
  const rgba = (text) => {
    const parts = text.match(/rgba?\\(([^)]+)\\)/)[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
  };
  const over = (top, below) => [0, 1, 2].map((i) => top[i] * top[3] + below[i] * (1 - top[3])).concat(1);
  const background = (node) => {
    const layers = [];
    for (let n = node; n; n = n.parentElement) {
      const colour = rgba(getComputedStyle(n).backgroundColor);
      if (colour[3] > 0) layers.push(colour);
      if (colour[3] === 1) break;
    }
    return layers.reverse().reduce((below, top) => over(top, below), [255, 255, 255, 1]);
  };
  const luminance = (c) => c.slice(0, 3).map((v) => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  }).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (fg, bg) => {
    const [light, dark] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
    return (light + 0.05) / (dark + 0.05);
  };
  const name = (n) => n.tagName.toLowerCase() + (n.id ? "#" + n.id : "") + (n.className && typeof n.className === "string" ? "." + n.className.replace(/ /g, ".") : "")
    + " '" + (n.textContent || n.placeholder || n.value || "").trim().slice(0, 30) + "'";
  const found = [];
  for (const node of document.body.querySelectorAll("*")) {
    if (!node.getClientRects().length || getComputedStyle(node).visibility !== "visible") continue;
    const bg = background(node);
    const text = [...node.childNodes].some((c) => c.nodeType === Node.TEXT_NODE && c.textContent.trim());
    if (text || node.matches("input[type=text], input[type=password], input[type=search], input[type=number], input[type=date], input[type=datetime-local], select")) {
      found.push([name(node), ratio(over(rgba(getComputedStyle(node).color), bg), bg)]);
    }
    if (node.placeholder && !node.value) {
      found.push([name(node) + "::placeholder", ratio(over(rgba(getComputedStyle(node, "::placeholder").color), bg), bg)]);
    }
  }
  return found;
}"""
"""[element, WCAG contrast ratio] for every visible element with text of its own, every text
field (its value) and placeholder: the text colour (alpha blended) against the background
colours it is painted on, composited up the ancestors to the white page."""
WCAG_AA = 4.5


def test_every_text_on_the_main_pages_meets_wcag_aa_contrast(
    page: object, server: Server, person_photos: list[Path]
) -> None:
    """Body text, labels, links, buttons (the disabled delete button too), status lines, the
    notice and secret boxes, table headings and placeholders, on each main page, have a
    contrast ratio of at least 4.5:1 against their background (WCAG 2 AA)."""
    coll, pid = enrolled_person(server, person_photos[0], keep_images=True)
    with server.client(server.admin) as client:
        bare = client.post(f"/v1/collections/{coll}/persons", json={"display_name": "No Consent"})
    page.goto(server.url + "/")
    page.get_by_label("API key").fill("vk_wrong.secret")
    page.get_by_role("button", name="Sign in").click()
    page.locator("#status", has_text="Sign-in failed").wait_for()
    seen = {"sign-in": page.evaluate(CONTRAST)}
    sign_in(page, server, server.admin)
    seen["collections"] = page.evaluate(CONTRAST)
    visits = {
        "collection": (f"#/c/{coll}", "main tbody tr"),
        "person": (f"#/c/{coll}/p/{pid}", "img.thumb"),
        "person without consent": (f"#/c/{coll}/p/{bare.json()['id']}", "#needs-consent"),
        "identify": ("#/identify", "main form"),
        "verify": ("#/verify", "main form"),
        "audit": ("#/audit", "#chain.good"),
        "keys": ("#/keys", "#key-name"),
    }
    for what, (where, ready) in visits.items():
        page.goto(server.url + "/console/" + where)
        page.locator(ready).first.wait_for()
        seen[what] = page.evaluate(CONTRAST)
    page.locator("#key-name").fill("contrast")
    page.get_by_label("identify").check()
    page.get_by_role("button", name="Create key").click()
    page.locator("#new-secret").wait_for()
    seen["new key"] = page.evaluate(CONTRAST)
    assert all(len(found) >= 5 for found in seen.values()), {k: len(v) for k, v in seen.items()}
    assert any(e.startswith("button.danger 'Delete person'") for e, _ in seen["person"])
    low = {what: [(e, round(r, 2)) for e, r in found if r < WCAG_AA] for what, found in seen.items()}
    assert not any(low.values()), {what: found for what, found in low.items() if found}

STREAMS = """(() => {
  const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  window.streams = [];
  navigator.mediaDevices.getUserMedia = async (c) => { const s = await real(c); window.streams.push(s); return s; };
})()"""
"""Keeps each stream the console gets (the real one, passed on) so a test can see it stopped."""

ALL_STOPPED = (
    "n => window.streams.length === n"
    " && window.streams.every(s => s.getTracks().every(t => t.readyState === 'ended'))"
)


def capture(page: object, action: str) -> None:
    """Start the camera, wait for its first frames, then "Capture and <action>"."""
    preview = page.get_by_label("Camera preview")  # type: ignore[attr-defined]
    assert not preview.is_visible()  # no empty box before the camera runs
    page.get_by_role("button", name="Use the webcam").click()  # type: ignore[attr-defined]
    page.wait_for_function("() => !document.getElementById('webcam-capture').disabled")  # type: ignore[attr-defined]
    assert preview.is_visible()
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    page.get_by_role("button", name=f"Capture and {action}").click()  # type: ignore[attr-defined]
    assert not preview.is_visible()


def test_a_webcam_frame_is_identified_and_verified_and_the_camera_stopped(
    page: object, server: Server, person_photos: list[Path], collection: str
) -> None:
    """One frame of Chromium's fake camera (a y4m of a photo of the person) identifies the
    enrolled person and verifies against another photo of them; every stream is stopped after
    its capture, and when the page changes before one."""
    with server.client(server.admin) as client:
        base = f"/v1/collections/{collection}/persons"
        pid = client.post(base, json={"display_name": "Cam Person"}).json()["id"]
        grant = {"basis": "consent", "granted_by": "test"}
        assert client.post(f"{base}/{pid}/consents", json=grant).status_code == 201
        with open(person_photos[0], "rb") as photo:
            enrolled = client.post(f"{base}/{pid}/faces", files={"photo": photo})
        assert enrolled.status_code == 201, enrolled.text
    page.add_init_script(STREAMS)
    sign_in(page, server, server.admin)
    page.goto(server.url + "/console/#/identify")
    page.get_by_role("heading", name="Identify").wait_for()
    page.get_by_label("Collection").select_option(collection)
    page.get_by_label("Purpose (kept in the audit log)").fill("webcam test")
    capture(page, "search")
    verdict = page.locator("#identify-results .verdict").first
    verdict.wait_for(timeout=60_000)
    assert "MATCH Cam Person" in verdict.inner_text(), verdict.inner_text()
    page.wait_for_function(ALL_STOPPED, arg=1)

    page.get_by_role("link", name="Verify").click()
    page.get_by_role("heading", name="Verify").wait_for()
    page.get_by_label("Purpose (kept in the audit log)").fill("webcam test")
    page.get_by_label("First photo").set_input_files(str(person_photos[0]))
    capture(page, "verify")
    same = page.locator("#verify-results .verdict")
    same.wait_for(timeout=60_000)
    assert same.inner_text().startswith("SAME person"), same.inner_text()
    page.wait_for_function(ALL_STOPPED, arg=2)

    page.get_by_role("button", name="Use the webcam").click()
    page.wait_for_function("() => !document.getElementById('webcam-capture').disabled")
    assert not page.evaluate(ALL_STOPPED, 3)  # control: it runs
    page.get_by_role("link", name="Identify").click()
    page.get_by_role("heading", name="Identify").wait_for()
    page.wait_for_function(ALL_STOPPED, arg=3)


def test_verify_by_upload_says_same_or_not(
    page: object, server: Server, person_photos: list[Path], distractor_photos: list[Path]
) -> None:
    sign_in(page, server, server.admin)
    page.get_by_role("link", name="Verify").click()
    page.get_by_role("heading", name="Verify").wait_for()
    page.get_by_label("Purpose (kept in the audit log)").fill("console test")
    verdict = page.locator("#verify-results .verdict")
    seen = []
    for other in (person_photos[1], distractor_photos[0]):
        page.locator("#verify-results").evaluate("n => n.replaceChildren()")
        page.get_by_label("First photo").set_input_files(str(person_photos[0]))
        page.get_by_label("Second photo").set_input_files(str(other))
        page.get_by_role("button", name="Verify", exact=True).click()
        verdict.wait_for(timeout=60_000)
        seen.append(verdict.inner_text())
    assert seen[0].startswith("SAME person"), seen
    assert seen[1].startswith("NOT the same person"), seen
    snap(page, "verify")


def test_sign_in_is_interactive_within_a_second_and_works_from_the_keyboard(
    page: object, server: Server
) -> None:
    page.goto(server.url + "/console/")  # warm: the first load of a fresh process is not the point
    started = time.monotonic()
    page.goto(server.url + "/")
    page.locator("#apikey:focus").wait_for()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"sign-in form interactive after {elapsed:.2f} s"
    snap(page, "sign-in")
    page.keyboard.type(server.admin)  # the key field has the focus on arrival
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Collections").wait_for()
    # Tab on to the create form's Name field, type, Enter: a collection made without a mouse.
    label = "document.activeElement.closest('label')?.firstChild?.textContent"
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate(label) == "Name":
            break
    assert page.evaluate(label) == "Name", "the Name field is not reachable with Tab"
    name = f"kb-{uuid.uuid4().hex[:8]}"
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    page.get_by_role("link", name=name).wait_for()


def test_persons_are_searched_in_the_store_and_paged(
    page: object, server: Server, collection: str
) -> None:
    base = f"/v1/collections/{collection}/persons"
    with server.client(server.admin) as client:
        for name in ("Alpha One", "Beta Two", "100% Gamma", "alphabet soup"):
            assert client.post(base, json={"display_name": name}).status_code == 201
        found = client.get(base, params={"search": "ALPHA"}).json()["items"]
        assert sorted(p["display_name"] for p in found) == ["Alpha One", "alphabet soup"]
        literal = client.get(base, params={"search": "%"}).json()["items"]
        assert [p["display_name"] for p in literal] == ["100% Gamma"]  # % is not a wildcard
    sign_in(page, server, server.admin)
    page.goto(server.url + f"/console/#/c/{collection}")
    page.get_by_role("heading", name=f"Collection {collection}").wait_for()
    assert page.get_by_role("link", name="Beta Two").count() == 1  # positive control
    page.get_by_label("Search persons (name or external id)").fill("alpha")
    page.get_by_role("button", name="Search").click()
    page.wait_for_function("() => !document.body.innerText.includes('Beta Two')")
    assert page.get_by_role("link", name="Alpha One").count() == 1
    assert page.get_by_role("link", name="alphabet soup").count() == 1


LARGE = 100_000
"""Persons in the large collection: the size the console's list must page rather than load."""
LARGE_BUDGET_S = 1.0
"""The most a page or a search of :data:`LARGE` persons may take over HTTP (measured ~0.05 s)."""


@pytest.fixture(scope="module")
def large_collection(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A :data:`LARGE`-person collection in the server's store, imported as ``visage import``
    imports (500 persons a transaction) from a synthetic export of bare persons: ~8 s on 2
    shared cores, the cheapest real bulk path (with a consent and a template each: ~27 s)."""
    name = f"large-{uuid.uuid4().hex[:6]}"
    export = write_export(tmp_path_factory.mktemp("large") / "e.jsonl", LARGE, templates=False)
    with Gallery(server.store, actor="test") as g:
        assert g.import_collection(export, name=name).persons == LARGE
    return name


def timed_get(client: httpx.Client, path: str, **params: object) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return time.monotonic() - started, response


def test_a_100k_person_collection_answers_one_page_and_a_search_in_the_store(
    server: Server, large_collection: str
) -> None:
    """Over HTTP, the first and the last page of 100,000 persons and a search for one of them
    each answer within :data:`LARGE_BUDGET_S` with that page alone."""
    base = f"/v1/collections/{large_collection}/persons"
    with server.client(server.admin) as client:
        assert client.get(f"/v1/collections/{large_collection}").json()["persons"] == LARGE
        asked = {
            "first page": ({"limit": 50}, ["Person 0", "Person 49"]),
            "last page": ({"offset": LARGE - 50, "limit": 50}, ["Person 99950", "Person 99999"]),
            "search": ({"search": "person 73421"}, ["Person 73421", "Person 73421"]),
            "external id": ({"search": "EXT-99998"}, ["Person 99998", "Person 99998"]),
        }
        for what, (params, ends) in asked.items():
            took, response = timed_get(client, base, **params)
            names = [p["display_name"] for p in response.json()["items"]]
            assert [names[0], names[-1]] == ends, (what, names[:3])
            assert len(names) == (50 if "page" in what else 1), (what, len(names))
            assert len(response.content) < 50_000, (what, len(response.content))
            assert took <= LARGE_BUDGET_S, f"{what}: {took:.2f} s"


def test_the_console_lists_and_searches_a_100k_person_collection(
    page: object, server: Server, large_collection: str
) -> None:
    """The collection page shows 50 of 100,000 persons within 2 s of being opened, pages on,
    and finds one person by name through the store's search."""
    sign_in(page, server, server.admin)
    started = time.monotonic()
    page.goto(server.url + f"/console/#/c/{large_collection}")
    page.get_by_text(f"Persons 1–50 of {LARGE}").wait_for()
    took = time.monotonic() - started
    assert took <= 2 * LARGE_BUDGET_S, f"the first page shown after {took:.2f} s"
    assert page.locator("main tbody tr").count() == 50
    page.get_by_role("button", name="Next").click()
    page.get_by_text(f"Persons 51–100 of {LARGE}").wait_for()
    page.get_by_label("Search persons (name or external id)").fill("Person 73421")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Person 73421", exact=True).wait_for()
    assert page.locator("main tbody tr").count() == 1


def filter_audit(page: object, submit: str = "click", **fields: str) -> list[dict[str, str]]:
    """Fill the audit page's filter fields by label, submit (a click on Filter, or Enter in
    the last field), wait for the new table; its rows (seq, actor, action)."""
    page.locator("main table").evaluate("t => t.dataset.stale = '1'")  # type: ignore[attr-defined]
    last = None
    for label, value in fields.items():
        last = page.get_by_label(label, exact=True)  # type: ignore[attr-defined]
        last.fill(value)
    if submit == "enter" and last is not None:
        last.press("Enter")
    else:
        page.get_by_role("button", name="Filter").click()  # type: ignore[attr-defined]
    return fresh_rows(page)


def fresh_rows(page: object) -> list[dict[str, str]]:
    """The audit table's rows once a new table has replaced the one marked stale."""
    page.locator("main table:not([data-stale])").wait_for()  # type: ignore[attr-defined]
    return page.evaluate(  # type: ignore[attr-defined,no-any-return]
        """() => [...document.querySelectorAll('main tbody tr')].map(r => ({
          seq: r.cells[0].textContent, actor: r.cells[2].textContent, action: r.cells[3].textContent }))"""
    )


def test_the_audit_page_filters_in_the_store_and_pages_back(
    browser: object, server: Server, collection: str
) -> None:
    """Actor, collection and a since / until window in the browser's own time zone (here
    +05:30) select exactly the events the store holds for them, 100 a page with "Older events"
    for the rest; since after until is refused with the API's reason, not a blank page."""
    tokens = [server.key(["enroll"], [collection]) for _ in range(2)]
    actors = [t.split(".")[0] for t in tokens]
    base = f"/v1/collections/{collection}/persons"
    with server.client(tokens[0]) as client:
        for n in range(101):
            assert client.post(base, json={"display_name": f"Early {n}"}).status_code == 201
    boundary = math.ceil(time.time())  # a whole second: datetime-local counts in seconds
    time.sleep(boundary - time.time() + 0.05)
    with server.client(tokens[1]) as client:
        for n in range(2):
            assert client.post(base, json={"display_name": f"Late {n}"}).status_code == 201
    with server.client(server.admin) as client:
        stored = client.get("/v1/audit", params={"collection": collection, "limit": 1000})
    events = stored.json()["items"][::-1]  # newest first, as the page lists them
    cut = datetime.fromtimestamp(boundary, UTC)
    late = [str(e["seq"]) for e in events if datetime.fromisoformat(e["at"]) >= cut]
    early = [str(e["seq"]) for e in events if datetime.fromisoformat(e["at"]) < cut]
    assert len(late) == 2 and len(early) == 102  # 101 persons and the collection's creation
    local = (cut + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    context = browser.new_context(timezone_id="Asia/Kolkata")  # type: ignore[attr-defined]
    page = context.new_page()
    sign_in(page, server, server.admin)
    page.goto(server.url + "/console/#/audit")
    page.get_by_role("heading", name="Audit log").wait_for()

    rows = filter_audit(page, "enter", **{"Collection": collection, "Actor (key id)": actors[0]})
    assert [r["seq"] for r in rows] == early[:100]
    assert {r["actor"] for r in rows} == {actors[0]}
    page.locator("main table").evaluate("t => t.dataset.stale = '1'")
    page.get_by_role("button", name="Older events").click()
    assert [r["seq"] for r in fresh_rows(page)] == early[100:101]  # A's first; then the admin's

    rows = filter_audit(page, **{"Actor (key id)": "", "Since (your local time)": local})
    assert [r["seq"] for r in rows] == late
    assert {r["actor"] for r in rows} == {actors[1]}
    rows = filter_audit(
        page, **{"Since (your local time)": "", "Until, not including (your local time)": local}
    )
    assert [r["seq"] for r in rows] == early[:100]
    assert page.get_by_role("button", name="Older events").count() == 1

    page.get_by_label("Since (your local time)", exact=True).fill("2099-01-01T00:00:00")
    page.get_by_role("button", name="Filter").click()
    page.locator("#status", has_text="Filter refused").wait_for()
    assert "is after until" in page.locator("#status").inner_text()
    assert page.locator("main table").count() == 0
    context.close()


FIGURES_DRAWN = """(count) => {
  const images = [...document.querySelectorAll('#eval-results img')];
  return images.length === count && images.every((i) => i.complete && i.naturalWidth > 0);
}"""
ALL_FIGURES_DRAWN = f"() => ({FIGURES_DRAWN})(3)"


def test_the_evaluation_page_runs_a_protocol_and_shows_its_figures(
    page: object, server: Server, faces_dir: Path, tmp_path: Path
) -> None:
    """12 pairs and a zip of their photos uploaded: a refusal first (not a zip) with the API's
    reason, then the report's accuracy as the API states it and three figures drawn; on the
    next visit the page shows that last report."""
    pairs, archive = small_protocol(faces_dir, tmp_path)
    not_zip = tmp_path / "photos.zip"
    not_zip.write_bytes(b"not a zip")
    sign_in(page, server, server.admin)
    page.get_by_role("link", name="Evaluation").click()
    page.get_by_role("heading", name="Evaluation").wait_for()
    page.locator("#eval-none").wait_for()
    page.get_by_label("Pairs file (LFW pairs, or a CSV a,b,same)").set_input_files(str(pairs))
    photos = page.get_by_label("Photos (a zip of the folder the pairs name)")
    photos.set_input_files(str(not_zip))
    page.get_by_role("button", name="Run evaluation").click()
    page.locator("#status", has_text="Evaluation refused").wait_for()
    assert "not a zip archive" in page.locator("#status").inner_text()
    photos.set_input_files(str(archive))
    page.get_by_role("button", name="Run evaluation").press("Enter")  # the keyboard submits
    page.locator("#eval-accuracy").wait_for(timeout=60_000)
    with server.client(server.admin) as client:
        last = client.get("/v1/eval/last").json()
    shown = f"Accuracy {last['report']['accuracy']['mean']:.4f}"
    assert page.locator("#eval-accuracy").inner_text().startswith(shown)
    page.wait_for_function(ALL_FIGURES_DRAWN)
    snap(page, "evaluation")
    page.reload()
    page.locator("#eval-accuracy", has_text=shown).wait_for()
    page.wait_for_function(ALL_FIGURES_DRAWN)
    assert not [e for e in page.csp_errors if "Content Security Policy" in e]  # type: ignore[attr-defined]


def test_the_evaluation_page_runs_an_identification_and_shows_its_cmc(
    page: object, server: Server, faces_dir: Path, tmp_path: Path
) -> None:
    """Identify chosen, a gallery list, a probe list and a zip of their photos uploaded: a
    refusal first (a probe line without a path) with the API's reason, then the rank-1 the API
    states, to four decimals, and every figure drawn, the CMC among them; on the next visit the
    page shows that report."""
    gallery, probes, archive = identification_lists(faces_dir, tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("just-a-name\n")
    sign_in(page, server, server.admin)
    page.get_by_role("link", name="Evaluation").click()
    page.get_by_role("heading", name="Evaluation").wait_for()
    pairs = page.get_by_label("Pairs file (LFW pairs, or a CSV a,b,same)")
    assert pairs.is_visible()
    page.get_by_label("Identify: a gallery and a probe list").check()
    assert pairs.is_hidden()
    page.get_by_label("Gallery list (person path lines)").set_input_files(str(gallery))
    probe_list = page.get_by_label(
        "Probe list (person path lines; persons not in the gallery are non-mated)"
    )
    probe_list.set_input_files(str(bad))
    photos = page.get_by_label("Photos (a zip of the folder the lists name)")
    photos.set_input_files(str(archive))
    page.get_by_role("button", name="Run evaluation").click()
    page.locator("#status", has_text="Evaluation refused").wait_for(timeout=60_000)
    assert "bad.txt:1: expected 'person path'" in page.locator("#status").inner_text()
    probe_list.set_input_files(str(probes))
    page.get_by_role("button", name="Run evaluation").click()
    page.locator("#eval-rank1").wait_for(timeout=60_000)
    with server.client(server.admin) as client:
        last = client.get("/v1/eval/last").json()
    assert last["kind"] == "identify" and "cmc" in last["figures"]
    shown = f"Rank-1 {last['report']['rank1']:.4f}"
    assert page.locator("#eval-rank1").inner_text().startswith(shown)
    page.wait_for_function(FIGURES_DRAWN, arg=len(last["figures"]))
    assert page.locator('#eval-results img[data-figure="cmc"]').count() == 1
    snap(page, "evaluation-identify")
    page.reload()
    page.locator("#eval-rank1", has_text=shown).wait_for()
    page.wait_for_function(FIGURES_DRAWN, arg=len(last["figures"]))
    assert not [e for e in page.csp_errors if "Content Security Policy" in e]  # type: ignore[attr-defined]


PAGE_BUDGET_S = 1.0
"""Issue 15's "first page interactive in ≤ 1 s on loopback", for every main page."""
PAGE_LOADS = 3
"""Loads of each page; the median is held to :data:`PAGE_BUDGET_S` (one load on 2 shared
cores can be held up by another process; the slowest is reported beside it)."""


def interactive_after(page: object, url: str, control: object) -> float:
    """Seconds from navigating to ``url`` as a new document (not a hash change: the script,
    ``/v1/me`` and the page's own API calls all count) until ``control`` is visible; it must
    then be enabled."""
    page.goto("about:blank")  # type: ignore[attr-defined]
    started = time.monotonic()
    page.goto(url)  # type: ignore[attr-defined]
    control.wait_for()  # type: ignore[attr-defined]
    took = time.monotonic() - started
    assert control.is_enabled(), url  # type: ignore[attr-defined]
    return took


def test_every_main_page_is_interactive_within_a_second(
    page: object, server: Server, person_photos: list[Path], large_collection: str
) -> None:
    """Each main page, loaded afresh with the key in the tab, shows its main control enabled
    within :data:`PAGE_BUDGET_S` (median of :data:`PAGE_LOADS`): the store holds whatever the
    module's tests made by then, the 100,000-person collection included (its list is the
    persons page timed), and an evaluation report where that test ran first."""
    coll, pid = enrolled_person(server, person_photos[0], keep_images=True)
    sign_in(page, server, server.admin)
    button = page.get_by_role
    pages = {
        "collections": ("#/collections", button("button", name="Create", exact=True)),
        "persons (100k)": (f"#/c/{large_collection}",
                           page.get_by_label("Search persons (name or external id)")),
        "person": (f"#/c/{coll}/p/{pid}", page.locator("#enroll-files")),
        "identify": ("#/identify", page.get_by_label("Photo", exact=True)),
        "verify": ("#/verify", button("button", name="Verify", exact=True)),
        "audit": ("#/audit", button("button", name="Filter", exact=True)),
        "evaluation": ("#/eval", button("button", name="Run evaluation")),
        "keys": ("#/keys", button("button", name="Create key")),
    }  # fmt: skip
    seen = {
        name: sorted(interactive_after(page, server.url + "/console/" + where, control)
                     for _ in range(PAGE_LOADS))
        for name, (where, control) in pages.items()
    }  # fmt: skip
    shown = ", ".join(f"{n} {t[len(t) // 2]:.2f} s (max {t[-1]:.2f})" for n, t in seen.items())
    print(f"interactive after: {shown}")  # seen with pytest -s
    slow = [name for name, took in seen.items() if took[len(took) // 2] > PAGE_BUDGET_S]
    assert not slow, shown


def test_the_audit_page_is_usable_while_the_chain_is_walked(
    page: object, server: Server, collection: str
) -> None:
    """``GET /v1/audit/verify`` walks the whole log (seconds on a long one): the page's events
    and filters show without waiting for it, a filter applied meanwhile asks for no second
    walk, and the verdict is filled in once the walk answers."""
    held: list[object] = []
    page.route("**/v1/audit/verify", lambda route: held.append(route))
    sign_in(page, server, server.admin)
    page.goto(server.url + "/console/#/audit")
    page.get_by_role("heading", name="Audit log").wait_for(timeout=5_000)  # budget: 1 s
    assert fresh_rows(page), "no events listed while the walk is held"
    assert page.locator("#chain").inner_text() == "Verifying the chain…"
    assert filter_audit(page, Collection=collection), "no events listed for the collection"
    assert len(held) == 1, len(held)
    held[0].continue_()
    page.locator("#chain", has_text="Chain verified").wait_for()
    assert len(page.locator("#head").inner_text()) == 64
