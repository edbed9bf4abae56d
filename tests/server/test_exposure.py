"""What the server shows to whom: open endpoints name no tenant, a search names only matches to
a key that may not list persons, and a wrong method is told the right ones."""

from __future__ import annotations

import uuid

import httpx
import numpy as np

from .conftest import Server, problem


def unit(rng: np.random.Generator) -> list[float]:
    vector = rng.standard_normal(128)
    return [float(v) for v in vector / np.linalg.norm(vector)]


def enrolled(server: Server, collection: str, count: int) -> list[list[float]]:
    """``count`` consented persons (names ``Person i``, external ids ``ext-i``), one random
    template each; their templates, in order."""
    rng = np.random.default_rng(11)
    templates = []
    with server.client(server.admin) as client:
        base = f"/v1/collections/{collection}"
        for i in range(count):
            made = client.post(
                f"{base}/persons", json={"display_name": f"Person {i}", "external_id": f"ext-{i}"}
            )
            assert made.status_code == 201, made.text
            person = made.json()["id"]
            granted = client.post(
                f"{base}/persons/{person}/consents", json={"basis": "consent", "granted_by": "t"}
            )
            assert granted.status_code == 201, granted.text
            templates.append(unit(rng))
            added = client.post(
                f"{base}/persons/{person}/faces",
                params={"purpose": "test"},
                json={"embedding": templates[-1]},
            )
            assert added.status_code == 201, added.text
    return templates


def test_open_endpoints_name_no_collection_and_count_nothing(server: Server) -> None:
    name = f"secret-{uuid.uuid4().hex[:10]}"
    with server.client(server.admin) as client:
        assert client.post("/v1/collections", json={"name": name}).status_code == 201
    enrolled(server, name, 2)
    # Positive control: the admin's scrape does carry the collection and its sizes.
    with server.client(server.admin) as admin:
        scraped = admin.get("/metrics")
        assert scraped.status_code == 200
        assert f'visage_gallery_persons{{collection="{name}"}} 2.0' in scraped.text
    open_metrics = httpx.get(f"{server.url}/metrics")
    assert open_metrics.status_code == 200 and "visage_http_requests_total" in open_metrics.text
    assert name not in open_metrics.text and "visage_gallery" not in open_metrics.text
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert name not in ready.text and "keys" not in ready.text
    assert set(ready.json()["checks"]) == {"models", "store"}
    # A key that is not an unrestricted admin key does not get the sizes either.
    limited = server.key(["admin"], [name])
    for token in (server.key(["identify", "enroll"]), limited):
        with server.client(token) as client:
            problem(client.get("/metrics"), 403)
    with server.client("vsg_not.a-key") as client:
        problem(client.get("/metrics"), 401)


def test_an_identify_only_key_sees_only_matches(server: Server, collection: str) -> None:
    templates = enrolled(server, collection, 5)
    base = f"/v1/collections/{collection}"
    stranger = unit(np.random.default_rng(99))
    near = np.asarray(templates[3]) + 0.01 * np.random.default_rng(5).standard_normal(128)
    lister = server.key(["identify", "enroll"], [collection])
    identifier = server.key(["identify"], [collection])

    def search(token: str, route: str, vector: list[float], k: int) -> dict[str, object]:
        with server.client(token) as client:
            answer = client.post(
                f"{base}/{route}", params={"purpose": "test", "k": k}, json={"embeddings": [vector]}
            )
        assert answer.status_code == 200, answer.text
        face: dict[str, object] = answer.json()["faces"][0]
        return face

    # Positive control: a key that may list persons sees every name for a stranger.
    listed = search(lister, "identify", stranger, 100)
    assert listed["unknown"] is True
    assert {c["display_name"] for c in listed["candidates"]} == {f"Person {i}" for i in range(5)}  # type: ignore[attr-defined]
    similar = search(lister, "find-similar", stranger, 1000)
    assert len(similar["similar"]) == 5  # type: ignore[arg-type]
    # The attack: k=100 / k=1000 with an identify-only key names nobody.
    hidden = search(identifier, "identify", stranger, 100)
    assert hidden["unknown"] is True and hidden["candidates"] == []
    assert search(identifier, "find-similar", stranger, 1000)["similar"] == []
    # A real match is still named, and only the match.
    found = search(identifier, "identify", [float(v) for v in near / np.linalg.norm(near)], 100)
    assert found["unknown"] is False
    assert [(c["display_name"], c["external_id"], c["same"]) for c in found["candidates"]] == [  # type: ignore[attr-defined]
        ("Person 3", "ext-3", True)
    ]
    close = search(identifier, "find-similar", [float(v) for v in near / np.linalg.norm(near)], 1000)
    assert [s["display_name"] for s in close["similar"]] == ["Person 3"]  # type: ignore[attr-defined]


def test_405_names_the_allowed_methods(server: Server) -> None:
    with server.client(server.admin) as client:
        for method, path, allowed in (
            ("PUT", "/v1/collections", "GET, POST"),
            ("DELETE", "/v1/collections/x/identify", "POST"),
            ("POST", "/v1/collections/x/persons/p1", "GET, PATCH, DELETE"),
            ("POST", "/healthz", "GET"),
        ):
            answer = client.request(method, path)
            body = problem(answer, 405)
            assert answer.headers["allow"] == allowed, (path, answer.headers)
            assert str(body["detail"]).endswith(f"use {allowed}"), body
