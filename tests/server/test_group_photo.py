"""A server started with ``VISAGE_DETECTOR=blazeface`` finds the small faces of a large group
photo, in bounded time, on its photo routes; an unknown detector name stops the start in one line.

Issue 17: the server took only ``hog`` or ``cnn``, which find no 40-pixel face in a 4000x3000
photo (they see it shrunk to 2048 pixels). BlazeFace runs such a photo whole, in tiles
(``docs/performance.md``, "Small faces in large photos").
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import box_iou, group_photo
from visage.models import DETECTORS
from visage.models.base import Box

from .conftest import Server, start_server, stop_server

DETECTOR = "blazeface"
FACE_PX = 40
FACES = 24
MAX_FACES = 30
"""The server's ``max_faces`` (default 20), above :data:`FACES` so the photo is answered."""
MISSES = 1
"""Faces of :data:`FACES` the tiles may miss: 40 pixels is their floor, where recall depends on
where a face falls between tiles (a one-off check, this photo shifted to 8 places: 186 of 192
found, all 24 unshifted; 191 of 192 at 48 pixels)."""
BUDGET_S = 2.0
"""The stated cost of a 4000x3000 group photo with BlazeFace on the project's 2-core machine:
decoding, 119 windows of the full-range model, and each face's landmarks (and embedding)."""
LARGEST_BUDGET_S = 4.0
"""The stated cost of the largest photo the server decodes (40 MP, 7745x5164): decoding and
438 windows (3.5 s measured under load 2.3)."""
SLACK = 3.0
"""Times the budget a test allows, since the 2 cores are shared with other test runs."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's own ``visage serve``, with the BlazeFace detector (overrides conftest's)."""
    running = start_server(
        tmp_path_factory.mktemp("server"), detector=DETECTOR, max_faces=str(MAX_FACES)
    )
    yield running
    stop_server(running)
    assert "Traceback" not in running.log_tail(100_000), running.log_tail()


@pytest.fixture(scope="module")
def group(people_photos: list[Path]) -> tuple[bytes, list[Box]]:
    """A 4000x3000 JPEG of :data:`FACES` shared faces of :data:`FACE_PX` pixels, and their boxes."""
    canvas, truth = group_photo(people_photos, FACE_PX, size=(4000, 3000), count=FACES)
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, "JPEG", quality=95)
    return buffer.getvalue(), truth


def timed_post(client: httpx.Client, path: str, photo: bytes) -> tuple[httpx.Response, float]:
    """POST ``photo`` as the raw JPEG body; the answer and the seconds it took."""
    start = time.perf_counter()
    answer = client.post(path, content=photo, headers={"content-type": "image/jpeg"})
    return answer, time.perf_counter() - start


def assert_found_in_place(truth: list[Box], faces: list[dict[str, Any]]) -> None:
    """All but :data:`MISSES` placed faces have an answered box over them (IoU >= 0.3, as
    ``benchmarks/group_photos.py`` counts), and every answered box lies over a placed face."""
    boxes: list[Box] = [(f["box"]["left"], f["box"]["top"], f["box"]["right"], f["box"]["bottom"])
                        for f in faces]  # fmt: skip
    missed = [t for t in truth if max((box_iou(t, b) for b in boxes), default=0) < 0.3]
    assert len(missed) <= MISSES, missed
    stray = [b for b in boxes if max(box_iou(t, b) for t in truth) < 0.3]
    assert not stray, stray


def test_detect_finds_the_40_pixel_faces_of_a_4000x3000_photo_within_budget(
    server: Server, group: tuple[bytes, list[Box]]
) -> None:
    photo, truth = group
    with server.client(server.admin) as client:
        answer, took = timed_post(client, "/v1/detect", photo)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["width"], body["height"]) == (4000, 3000)
    assert_found_in_place(truth, body["faces"])
    assert took < BUDGET_S * SLACK, f"{took:.2f} s"


def test_identify_by_photo_uses_the_same_detector(
    server: Server, collection: str, group: tuple[bytes, list[Box]]
) -> None:
    """Identify embeds every face the tiles find (an empty collection: each is unknown)."""
    photo, truth = group
    with server.client(server.admin) as client:
        answer, took = timed_post(
            client, f"/v1/collections/{collection}/identify?purpose=test", photo
        )
    assert answer.status_code == 200, answer.text
    faces = answer.json()["faces"]
    assert all(f["unknown"] for f in faces)
    assert_found_in_place(truth, [f["face"] for f in faces])
    assert took < BUDGET_S * SLACK, f"{took:.2f} s"


def test_the_largest_photo_decoded_costs_at_most_its_stated_budget(server: Server) -> None:
    """A flat 7745x5164 PNG, just under the 40 MP pixel limit: the tiles' work grows with the
    area, so this is the most any photo costs BlazeFace on this server."""
    flat = Image.new("RGB", (7745, 5164), (128, 128, 128))
    buffer = io.BytesIO()
    flat.save(buffer, "PNG")
    with server.client(server.admin) as client:
        start = time.perf_counter()
        answer = client.post(
            "/v1/detect", content=buffer.getvalue(), headers={"content-type": "image/png"}
        )
        took = time.perf_counter() - start
    assert answer.status_code == 200 and answer.json()["faces"] == [], answer.text
    assert took < LARGEST_BUDGET_S * SLACK, f"{took:.2f} s"


def test_an_unknown_detector_stops_the_start_in_one_line(tmp_path: Path) -> None:
    """``VISAGE_DETECTOR=nonsense``: ``visage serve`` exits 1 at once, naming the setting and
    every accepted name, without a traceback."""
    env = {**os.environ, "VISAGE_DETECTOR": "nonsense", "VISAGE_DB": str(tmp_path / "g.db")}
    done = subprocess.run(
        [sys.executable, "-m", "visage", "serve", "--no-bootstrap-key"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "invalid settings: detector" in done.stderr and "'nonsense'" in done.stderr
    assert all(name in done.stderr for name in DETECTORS), done.stderr
