"""Keys, scopes, collections and the rate limit: every route refuses what the key may not do."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from .conftest import Server, problem, start_server, stop_server

# method, path ({c}: the test's collection), the scope it needs (None: any key).
ROUTES: list[tuple[str, str, str | None]] = [
    ("POST", "/v1/detect", "identify"),
    ("POST", "/v1/verify", "identify"),
    ("POST", "/v1/collections/{c}/identify?purpose=test", "identify"),
    ("POST", "/v1/collections/{c}/find-similar?purpose=test", "identify"),
    ("POST", "/v1/group", "identify"),
    ("GET", "/v1/calibrations/dlib_resnet_v1", "identify"),
    ("GET", "/v1/collections", None),
    ("POST", "/v1/collections", "admin"),
    ("GET", "/v1/collections/{c}", None),
    ("DELETE", "/v1/collections/{c}", "admin"),
    ("GET", "/v1/collections/{c}/persons", "enroll"),
    ("POST", "/v1/collections/{c}/persons", "enroll"),
    ("GET", "/v1/collections/{c}/persons/p1", "enroll"),
    ("PATCH", "/v1/collections/{c}/persons/p1", "enroll"),
    ("DELETE", "/v1/collections/{c}/persons/p1", "enroll"),
    ("GET", "/v1/collections/{c}/persons/p1/consents", "enroll"),
    ("POST", "/v1/collections/{c}/persons/p1/consents", "enroll"),
    ("POST", "/v1/collections/{c}/persons/p1/consents/revoke", "enroll"),
    ("POST", "/v1/collections/{c}/persons/p1/faces", "enroll"),
    ("GET", "/v1/collections/{c}/persons/p1/faces", "enroll"),
    ("DELETE", "/v1/collections/{c}/persons/p1/faces/1", "enroll"),
    ("GET", "/v1/collections/{c}/persons/p1/faces/1/image", "enroll"),
    ("POST", "/v1/collections/{c}/faces/bulk", "enroll"),
    ("GET", "/v1/audit", "admin"),
    ("GET", "/v1/audit/verify", "admin"),
    ("POST", "/v1/edge/events?collection={c}", "device"),
    ("GET", "/v1/edge/snapshot?collection={c}", "device"),
    ("GET", "/v1/edge/public-key", "device"),
    ("GET", "/v1/edge/devices", "admin"),
    ("GET", "/v1/me", None),
    ("GET", "/v1/keys", "admin"),
    ("POST", "/v1/keys", "admin"),
    ("DELETE", "/v1/keys/vk_000000000000", "admin"),
    ("POST", "/v1/eval/verify", "admin"),
    ("POST", "/v1/eval/identify", "admin"),
    ("GET", "/v1/eval/last", "admin"),
    ("GET", "/v1/eval/last/roc.png", "admin"),
]
OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
OTHER_SCOPES = {
    "identify": ["enroll"],
    "enroll": ["identify"],
    "device": ["identify", "enroll"],
    "admin": ["identify", "enroll", "device"],
}


def call(client: httpx.Client, method: str, path: str, collection: str) -> httpx.Response:
    """The route with a JSON body ({}), so only the key decides the answer."""
    url = path.replace("{c}", collection)
    if method in ("POST", "PUT", "PATCH"):
        return client.request(method, url, json={})
    return client.request(method, url)


def test_the_table_covers_every_route(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    served = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    listed = {
        (
            m,
            p.split("?")[0]
            .replace("{c}", "{collection}")
            .replace("p1", "{person}")
            .replace("/faces/1", "/faces/{template_id}")
            .replace("dlib_resnet_v1", "{model_id}")
            .replace("vk_000000000000", "{key_id}")
            .replace("/last/roc.png", "/last/{figure}.png"),
        )
        for m, p, _ in ROUTES
    }
    assert served - OPEN == listed, "list every route in ROUTES with the scope it needs"


@pytest.mark.parametrize(("method", "path", "scope"), [r for r in ROUTES if r[2] is not None])
def test_a_key_without_the_scope_is_refused(
    server: Server, collection: str, method: str, path: str, scope: str
) -> None:
    with server.client(server.key([scope])) as client:  # the control: the scope gets past
        assert call(client, method, path, collection).status_code not in (401, 403)
    token = server.key(OTHER_SCOPES[scope], [collection])
    with server.client(token) as client:
        body = problem(call(client, method, path, collection), 403)
    assert body["detail"] == f"key {token.split('.')[0]} lacks the {scope!r} scope", body


@pytest.mark.parametrize(("method", "path", "scope"), [r for r in ROUTES if "{c}" in r[1]])
def test_a_key_for_another_collection_is_refused(
    server: Server, collection: str, method: str, path: str, scope: str | None
) -> None:
    with server.client(server.key(["admin"], [collection])) as client:  # the control
        assert call(client, method, path, collection).status_code not in (401, 403)
    token = server.key(["admin"], ["some-other-collection"])
    with server.client(token) as client:
        body = problem(call(client, method, path, collection), 403)
    assert body["detail"] == f"key {token.split('.')[0]} may not use collection {collection!r}"


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_no_key_or_a_bad_key_is_unauthorized(
    server: Server, collection: str, method: str, path: str, scope: str | None
) -> None:
    address = f"127.0.1.{ROUTES.index((method, path, scope)) + 1}"  # failures of its own
    for token in (None, "not-a-key", "vk_000000000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"):
        with server.client(token, address=address) as client:
            response = call(client, method, path, collection)
        problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_collections_listing_shows_only_the_keys_collections(
    server: Server, collection: str
) -> None:
    with server.client(server.key(["identify"], [collection])) as client:
        names = [c["name"] for c in client.get("/v1/collections").json()["items"]]
    assert names == [collection]


def test_audit_needs_a_key_for_every_collection_unless_one_is_named(
    server: Server, collection: str
) -> None:
    with server.client(server.key(["admin"], [collection])) as client:
        problem(client.get("/v1/audit"), 403)
        problem(client.get("/v1/audit/verify"), 403)
        events = client.get("/v1/audit", params={"collection": collection})
        assert events.status_code == 200
        assert [e["action"] for e in events.json()["items"]] == ["collection.create"]


def test_a_revoked_key_is_refused_at_once(server: Server) -> None:
    token = server.key(["identify"])
    with server.client(token) as client:
        assert client.get("/v1/collections").status_code == 200
        server.keys.revoke(token.split(".")[0])
        problem(client.get("/v1/collections"), 401)


def test_the_rate_limit_answers_429_with_retry_after(server: Server) -> None:
    with server.client(server.key(["identify"], rate=0.5)) as client:
        statuses = []
        for _ in range(300):
            response = client.get("/v1/collections")
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
        body = problem(response, 429)
        assert int(response.headers["retry-after"]) >= 1
        assert set(statuses[:-1]) == {200}, body
        time.sleep(int(response.headers["retry-after"]))  # the wait it names is enough
        assert client.get("/v1/collections").status_code == 200


def test_health_readiness_and_metrics_are_open(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "checks": {}}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["models"] == "dlib_resnet_v1"
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("visage_http_requests_total", "visage_http_request_duration_seconds_bucket"):
        assert name in text
    assert 'route="/readyz"' in text
    with server.client(server.admin) as admin:
        assert "visage_gallery_templates" in admin.get("/metrics").text


def _exhaust(client: httpx.Client) -> httpx.Response:
    """Spend the key's bucket on allowed calls; the first 429."""
    for _ in range(300):
        response = client.get("/v1/collections")
        if response.status_code == 429:
            return response
        assert response.status_code == 200, response.text
    raise AssertionError("no 429 after 300 requests")


def test_refusals_come_in_order_401_then_429_then_403(server: Server, collection: str) -> None:
    """docs/server.md: 401 (no, unknown or revoked key), then 429 (the key's rate), then 403
    (scope, then collection). With its bucket empty, the key's forbidden calls are 429 (a key
    cannot probe its rights faster than its rate), a wrong secret for its id is still 401; once
    the bucket refills, the same calls are 403 for the scope, then for the collection."""
    token = server.key(["identify"], [collection], rate=0.5)
    forbidden_scope = ("POST", f"/v1/collections/{collection}/persons")  # needs enroll
    foreign = ("POST", "/v1/collections/elsewhere/identify?purpose=t")  # not its collection
    with server.client(token) as client:
        limited = _exhaust(client)
        problem(limited, 429)
        for method, path in (forbidden_scope, foreign):
            problem(client.request(method, path, json={"display_name": "x"}), 429)
    wrong = token.split(".")[0] + ".not-the-secret"
    with server.client(wrong) as client:
        problem(client.get("/v1/collections"), 401)
    time.sleep(int(limited.headers["retry-after"]))
    with server.client(token) as client:
        scope = problem(client.request(*forbidden_scope, json={"display_name": "x"}), 403)
        assert "enroll" in str(scope["detail"]), scope
        time.sleep(2.0)  # the next token, at 0.5 per second
        other = problem(client.request(*foreign, json={"embeddings": [[0.1] * 128]}), 403)
        assert "elsewhere" in str(other["detail"]), other


def test_the_first_start_creates_one_admin_key_and_shows_it_once(tmp_path: Path) -> None:
    """``visage serve`` on a store without keys creates an admin key and prints it; the key
    works for every collection; a restart with keys present prints none and creates none."""
    first = start_server(tmp_path, bootstrap=True)
    try:
        printed = re.findall(r"vk_[0-9a-f]{12}\.[A-Za-z0-9_-]+", first.log_tail(100_000))
        assert len(printed) == 1, first.log_tail()
        with first.client(printed[0]) as client:
            assert client.post("/v1/collections", json={"name": "boot"}).status_code == 201
            assert client.get("/v1/audit/verify").json()["ok"]
        names = sorted(k.name for k in first.keys.keys())  # noqa: SIM118 (a KeyStore)
        assert names == ["bootstrap admin", "test"]  # its own and the fixture's
    finally:
        stop_server(first)
    again = start_server(tmp_path, bootstrap=True)
    try:
        log = again.log_tail(100_000)
        assert "API keys exist" in log and not re.findall(r"vk_[0-9a-f]{12}\.", log), log
        names = sorted(k.name for k in again.keys.keys())  # noqa: SIM118 (a KeyStore)
        assert names == ["bootstrap admin", "test", "test"]
    finally:
        stop_server(again)
