"""No photo costs more than a bounded amount of work, so one client cannot stall another.

Issue 11: a 2 KB 4000x4000 PNG took 14.7 s and 3.6 GB in /v1/detect, a 75 KB 1x39,000,000 PNG
18-24 s, and an identify from another key waited 9 s behind them; both are under the pixel
limit. Detection now runs on at most DETECT_MAX_SIDE a side and strips are refused.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import Server, problem, start_server, stop_server
from .test_exposure import unit

BUDGET_S = 1.0
"""The stated cost of any photo on the project's 2-core machine."""
SLACK = 3.0
"""Times the budget a test allows, since the 2 cores are shared with other test runs."""


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def timed_post(server: Server, token: str, path: str, data: bytes, media: str) -> tuple[int, float, str]:
    with server.client(token) as client:
        start = time.perf_counter()
        answer = client.post(path, content=data, headers={"content-type": media})
        return answer.status_code, time.perf_counter() - start, answer.text


def test_a_flat_4000_square_png_is_answered_within_budget(server: Server) -> None:
    flat = png(Image.new("RGB", (4000, 4000), (128, 128, 128)))
    assert len(flat) < 100_000
    status, took, text = timed_post(server, server.admin, "/v1/detect", flat, "image/png")
    assert status == 200, text
    # Measured against a 250x250 photo's detect in the same run (load-independent): about 15x
    # now, about 200x before the fix.
    small = png(Image.new("RGB", (250, 250), (128, 128, 128)))
    _, yardstick, _ = timed_post(server, server.admin, "/v1/detect", small, "image/png")
    assert took < BUDGET_S * SLACK or took < 40 * yardstick, (took, yardstick)


def test_a_strip_is_refused_with_422_at_once(server: Server) -> None:
    strip = png(Image.new("L", (39_000_000, 1)))
    with server.client(server.admin) as client:
        start = time.perf_counter()
        answer = client.post("/v1/detect", content=strip, headers={"content-type": "image/png"})
        took = time.perf_counter() - start
    body = problem(answer, 422)
    assert body["type"] == "urn:visage:problem:extreme-aspect-ratio", body
    assert "39,000,000x1" in str(body["detail"])
    assert took < BUDGET_S, f"{took:.2f} s"


def test_another_clients_identify_is_not_stalled(
    server: Server, collection: str, people_photos: list[Path]
) -> None:
    flat = png(Image.new("RGB", (4000, 4000), (128, 128, 128)))
    photo = people_photos[0].read_bytes()
    attacker = server.key(["identify"])
    victim = server.key(["identify"], [collection])
    identify = f"/v1/collections/{collection}/identify?purpose=door"
    # The victim's own time alone, as the yardstick.
    status, alone, text = timed_post(server, victim, identify, photo, "image/jpeg")
    assert status == 200, text
    attacks: list[tuple[int, float, str]] = []

    def attack() -> None:
        for _ in range(3):
            attacks.append(timed_post(server, attacker, "/v1/detect", flat, "image/png"))

    # The attack photo's own cost, unloaded, against the victim's: about 15x an identify of a
    # 250x250 photo here (1 s vs 70 ms); before the fix it was about 200x (14.7 s).
    status, attack_alone, text = timed_post(server, attacker, "/v1/detect", flat, "image/png")
    assert status == 200, text
    assert attack_alone < 40 * alone, (attack_alone, alone)
    thread = threading.Thread(target=attack)
    thread.start()
    time.sleep(0.3)  # the first big photo is being worked on
    waited = [timed_post(server, victim, identify, photo, "image/jpeg") for _ in range(2)]
    thread.join()
    assert [a[0] for a in attacks] == [200, 200, 200], attacks
    assert [w[0] for w in waited] == [200, 200], waited
    # The victim waits for at most the big photo in progress, not for the attacker's queue.
    assert all(w[1] < alone + 2 * attack_alone for w in waited), (alone, attack_alone, waited)


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server taking one request at a time and at most three items per batch."""
    running = start_server(
        tmp_path_factory.mktemp("narrow"), threads="1", max_batch="3", rate_limit="0"
    )
    yield running
    stop_server(running)


def test_max_batch_bounds_every_batch_route(narrow: Server) -> None:
    """``max_batch=3`` ("most photos or embeddings in one group or bulk request"): three items
    are served, four refused naming the bound, for grouping and bulk enrollment, JSON (422;
    bulk JSON enrollment took any number up to 1000 before) and multipart (400)."""
    rng = np.random.default_rng(4)
    vectors = [unit(rng) for _ in range(4)]
    with narrow.client(narrow.admin) as client:
        assert client.post("/v1/collections", json={"name": "batch"}).status_code == 201
        person = client.post("/v1/collections/batch/persons", json={"display_name": "B"})
        pid = person.json()["id"]
        consent = {"basis": "consent", "granted_by": "B"}
        assert client.post(f"/v1/collections/batch/persons/{pid}/consents", json=consent
                           ).status_code == 201  # fmt: skip
        calls = {
            "group": lambda n: client.post(
                "/v1/group", params={"purpose": "t"}, json={"embeddings": vectors[:n]}),
            "bulk": lambda n: client.post(
                "/v1/collections/batch/faces/bulk", params={"purpose": "t"},
                json={"items": [{"person": pid, "embedding": v} for v in vectors[:n]]}),
            "bulk photos": lambda n: client.post(
                "/v1/collections/batch/faces/bulk",
                files=[("photos", (f"{i}.png", png(Image.new("RGB", (64, 64))), "image/png"))
                       for i in range(n)], data={"person": [pid] * n}),
        }  # fmt: skip
        for name, call in calls.items():
            served = call(3)
            assert served.status_code == 200, (name, served.text)
            if name == "bulk photos":  # refused by the form parser, before a photo is read
                refused = problem(call(4), 400)
                assert "Maximum number of files is 3" in str(refused["detail"]), refused
            else:
                refused = problem(call(4), 422)
                assert "4 items; at most 3 per request" in str(refused["detail"]), (name, refused)


def test_requests_beyond_the_threads_wait_their_turn(
    narrow: Server, people_photos: list[Path]
) -> None:
    """``threads=1``: while a slow photo is worked on, /healthz still answers at once (no
    request thread), and the requests that came after it wait: none is answered before it,
    all are answered. (Not in strict arrival order: a request takes several turns on the
    threads, auth then handler, and a later one's turn can come between; seen 1, 2, 0, 3.)"""
    flat = png(Image.new("RGB", (4000, 4000), (128, 128, 128)))
    done: list[tuple[int, int]] = []

    def ask(n: int) -> None:
        status, _, _ = timed_post(narrow, narrow.admin, "/v1/detect",
                                  people_photos[n].read_bytes(), "image/jpeg")  # fmt: skip
        done.append((n, status))

    def big() -> None:
        done.append((-1, timed_post(narrow, narrow.admin, "/v1/detect", flat, "image/png")[0]))

    slow = threading.Thread(target=big)
    slow.start()
    time.sleep(0.3)  # the big photo holds the only thread
    start = time.perf_counter()
    assert httpx.get(f"{narrow.url}/healthz", timeout=5).status_code == 200
    health_s = time.perf_counter() - start
    queued = []
    for n in range(4):
        queued.append(threading.Thread(target=ask, args=(n,)))
        queued[-1].start()
        time.sleep(0.1)  # a clear arrival order
    for thread in [slow, *queued]:
        thread.join()
    assert [status for _, status in done] == [200] * 5
    assert done[0][0] == -1 and sorted(n for n, _ in done[1:]) == [0, 1, 2, 3], done
    assert health_s < 0.5, health_s
