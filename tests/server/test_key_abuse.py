"""Issue 18, items 11 and 13, replayed over HTTP against a real server: what a key holder (or
someone holding no key) did to get more than the key allows.

- A key's own rate is its burst too: ``--rate 2`` got 100 requests at once.
- Failed authentications are limited per client address, before the key is looked up: bogus
  keys were never rate-limited at all.
- Keys expire (401 with a detail saying so), and the CLI sets and shows the expiry.
- A device key names its devices: it may not post or pull as another device id (403), and an
  event's idempotency key is the device's own, so no device can suppress another's events.
- Reads of personal data (person list, person, audit log) are audit events with the caller's
  key, and the chain still verifies.

Every test that floods bad keys does it from a loopback address of its own (127.0.0.x), so its
failures count against that address only.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np

from .conftest import Server, problem

FAILURES_PER_MINUTE = 20  # the server's default auth_failures_per_minute
BOGUS = "vk_0123456789ab.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"  # well formed, no such key


def events_since(client: httpx.Client, after: int, **params: Any) -> list[dict[str, Any]]:
    found = client.get("/v1/audit", params={"after": after, "limit": 1000, **params})
    assert found.status_code == 200, found.text
    return list(found.json()["items"])


def head_seq(client: httpx.Client) -> int:
    newest = client.get("/v1/audit", params={"order": "newest", "limit": 1}).json()["items"]
    return int(newest[0]["seq"]) if newest else 0


# ---------------------------------------------------------------- item 11: rates


def test_a_keys_own_rate_is_also_its_burst(server: Server) -> None:
    token = server.key(["identify"], rate=2)
    statuses: list[int] = []
    with server.client(token) as client:
        for _ in range(20):
            response = client.get("/v1/collections")
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
    assert statuses[0] == 200, statuses  # the control: the key works
    body = problem(response, 429)
    assert int(response.headers["retry-after"]) >= 1
    assert f"rate limit of key {token.split('.')[0]} exceeded" in str(body["detail"])
    # 2 at once, plus what refilled at 2/s while they ran; the server's burst was 100.
    assert statuses.count(200) <= 3, statuses


def test_bogus_keys_from_one_client_are_throttled_before_any_lookup(server: Server) -> None:
    address, other = "127.0.0.50", "127.0.0.51"
    served = server.key(["identify"])
    with server.client(served, address=address) as client:  # the control: served, remembered
        assert client.get("/v1/collections").status_code == 200
    statuses: list[int] = []
    with server.client(BOGUS, address=address) as bad:
        for _ in range(35):
            response = bad.get("/v1/collections")
            statuses.append(response.status_code)
    assert statuses[:FAILURES_PER_MINUTE] == [401] * FAILURES_PER_MINUTE, statuses
    assert set(statuses[FAILURES_PER_MINUTE + 1 :]) == {429}, statuses  # +1: a refill may fall in
    body = problem(response, 429)
    assert body["detail"].startswith(f"too many failed authentications from {address}; retry")
    wait = int(response.headers["retry-after"])
    assert 1 <= wait <= 60 // FAILURES_PER_MINUTE + 1

    # A key already served to this address goes on being served; a good key it has never shown
    # is refused like a guess — it is not even looked up — until a failure's worth refills.
    with server.client(served, address=address) as client:
        assert client.get("/v1/collections").status_code == 200
    fresh = server.key(["identify"])
    with server.client(fresh, address=address) as client:
        problem(client.get("/v1/collections"), 429)
        time.sleep(wait)
        assert client.get("/v1/collections").status_code == 200
    with server.client(BOGUS, address=other) as bad:
        problem(bad.get("/v1/collections"), 401)  # another address has failures of its own


# ---------------------------------------------------------------- item 13: expiry


def test_an_expired_key_is_refused_with_401_saying_so(server: Server) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    token = server.keys.create("short", scopes=["identify"], expires_at=soon).token
    with server.client(token, address="127.0.0.60") as client:
        assert client.get("/v1/collections").status_code == 200  # the control: valid until then
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
        body = problem(client.get("/v1/collections"), 401)
    key_id = token.split(".")[0]
    assert body["detail"] == (
        f"API key {key_id} expired at {soon.isoformat()}; create a new one (visage keys create)"
    )


def keys_cli(server: Server, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``visage keys COMMAND --db <the server's store> ARGS``, on a terminal wide enough for
    the key table's every column unwrapped."""
    return subprocess.run(
        [sys.executable, "-m", "visage", "keys", command, "--db", str(server.db), *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip


def test_keys_create_sets_an_expiry_and_devices_and_keys_list_shows_them(server: Server) -> None:
    day = (datetime.now(UTC) + timedelta(days=10)).date().isoformat()
    devices = ["--device", "cam-1", "--device", "cam-2"]
    made = keys_cli(server, "create", "--scopes", "device", "--expires", day, *devices, "--json")
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    assert record["expires_at"] == f"{day}T00:00:00+00:00"
    assert record["devices"] == ["cam-1", "cam-2"]
    later = keys_cli(server, "create", "--scopes", "identify", "--expires-in", "30d", "--json")
    assert later.returncode == 0, later.stderr
    expires = datetime.fromisoformat(json.loads(later.stdout)["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)

    listed = keys_cli(server, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    by_id = {k["id"]: k for k in json.loads(listed.stdout)}
    assert by_id[record["id"]]["expires_at"] == record["expires_at"]
    assert by_id[record["id"]]["devices"] == ["cam-1", "cam-2"]
    table = keys_cli(server, "list").stdout
    assert day in table and "cam-1,cam-2" in table and "never" in table and "any" in table

    for bad, why in (
        (["--expires-in", "30x"], "invalid duration '30x'"),
        (["--expires", "2001-01-01"], "expiry must be after now"),
        (["--expires", "soon"], "invalid expiry 'soon'"),
        (["--expires-in", "1d", "--expires", day], "not both"),
        (["--device", "bad id"], "invalid device id 'bad id'"),
    ):
        refused = keys_cli(server, "create", "--scopes", "device", *bad)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.startswith("error: ") and why in refused.stderr, refused.stderr


# ---------------------------------------------------------------- item 13: devices


def edge_event(key: str, device: str, dim: int, model_id: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    vector = np.random.default_rng(abs(hash(key)) % 2**32).standard_normal(dim).astype("<f4")
    vector /= np.linalg.norm(vector)
    return {
        "key": key, "device": device, "track": 1, "first_seen": now, "last_seen": now,
        "detections": 3, "quality": 0.9, "model_id": model_id,
        "embedding": base64.b64encode(vector.tobytes()).decode("ascii"),
    }  # fmt: skip


def post_events(client: httpx.Client, collection: str, device: str, *keys: str) -> httpx.Response:
    info = client.get(f"/v1/collections/{collection}").json()
    return client.post(
        "/v1/edge/events", params={"collection": collection},
        json={"device": {"id": device, "agent_version": "test"},
              "events": [edge_event(k, device, info["dim"], info["model_id"]) for k in keys]},
    )  # fmt: skip


def test_a_device_key_may_not_post_or_pull_as_another_device(
    server: Server, collection: str
) -> None:
    token = server.key(["device"], [collection], devices=["cam-a"])
    with server.client(token) as client:
        mine = post_events(client, collection, "cam-a", "a-1")  # the control: its own device
        assert mine.status_code == 200 and mine.json()["receipts"][0]["status"] == "stored"
        pulled = client.get(
            "/v1/edge/snapshot", params={"collection": collection, "device": "cam-a"}
        )
        assert pulled.status_code == 200, pulled.text
        body = problem(post_events(client, collection, "cam-b", "b-1"), 403)
        assert body["detail"] == f"key {token.split('.')[0]} may not act as device 'cam-b'"
        problem(
            client.get("/v1/edge/snapshot", params={"collection": collection, "device": "cam-b"}),
            403,
        )
    with server.client(server.admin) as admin:
        refusals = events_since(admin, 0, collection=collection, action="auth.forbidden")
    assert len(refusals) == 2 and refusals[0]["actor"] == token.split(".")[0]


def test_a_device_cannot_suppress_anothers_event_by_reusing_its_key(
    server: Server, collection: str
) -> None:
    shared = server.key(["device"], [collection], devices=["cam-a", "cam-b"])
    with server.client(shared) as client:
        first = post_events(client, collection, "cam-a", "door-7")
        assert first.json()["receipts"][0]["status"] == "stored", first.text
        retry = post_events(client, collection, "cam-a", "door-7")  # the control: idempotent
        assert retry.json()["receipts"][0]["status"] == "duplicate", retry.text
        theirs = post_events(client, collection, "cam-b", "door-7")  # the attack's victim
        assert theirs.json()["receipts"][0]["status"] == "stored", theirs.text
    with server.client(server.admin) as admin:
        devices = admin.get("/v1/edge/devices").json()["items"]
    counts = {d["device_id"]: d["events"] for d in devices if d["collection"] == collection}
    assert counts == {"cam-a": 1, "cam-b": 1}


# ---------------------------------------------------------------- item 13: audited reads


def test_reads_of_personal_data_are_audited_with_the_callers_key(
    server: Server, collection: str
) -> None:
    enroller = server.key(["enroll"], [collection])
    key_id = enroller.split(".")[0]
    with server.client(server.admin) as admin:
        made = admin.post(
            f"/v1/collections/{collection}/persons",
            json={"display_name": "Ada Lovelace", "external_id": "emp-1"},
        )
        assert made.status_code == 201, made.text
        person = made.json()["id"]
        start = head_seq(admin)
    with server.client(enroller) as client:
        listed = client.get(f"/v1/collections/{collection}/persons", params={"purpose": "review"})
        assert [p["id"] for p in listed.json()["items"]] == [person]  # the control: it reads
        assert client.get(f"/v1/collections/{collection}/persons/emp-1").status_code == 200
        assert client.get(f"/v1/collections/{collection}/persons/{person}/consents").is_success
        assert client.get(f"/v1/collections/{collection}/persons/{person}/faces").is_success
    with server.client(server.admin) as admin:
        reads = events_since(admin, start, collection=collection)
        chain = admin.get("/v1/audit/verify").json()
        after_read = events_since(admin, start, action="audit.read")
    assert [(e["action"], e["actor"]) for e in reads] == [
        ("person.list", key_id), ("person.read", key_id), ("person.read", key_id),
        ("person.read", key_id),
    ]  # fmt: skip
    assert reads[0]["purpose"] == "review" and reads[0]["summary"]["persons"] == [person]
    assert [e["summary"]["part"] for e in reads[1:]] == ["record", "consents", "faces"]
    assert all(e["summary"]["person"] == person for e in reads[1:])
    assert "Ada" not in json.dumps(reads) and "emp-1" not in json.dumps(reads)  # ids, not names
    audit_read = after_read[-1]  # the admin's own read of the log is an event too
    assert (audit_read["action"], audit_read["actor"]) == ("audit.read", server.admin.split(".")[0])
    assert audit_read["summary"]["events"] == len(reads)
    assert chain["ok"] is True and chain["broken_seq"] is None, chain
