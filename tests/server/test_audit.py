"""Every call that touches biometric data leaves an audit event with the key as actor."""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from visage.store import MAX_INTEGER

from .conftest import Server, problem

STORES = ("sqlite", "postgresql")  # tests/server/conftest.py: once on each store


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_every_biometric_call_is_in_the_chain(
    server: Server, collection: str, people_photos: list[Path]
) -> None:
    token = server.key(["identify", "enroll"], [collection])
    key_id = token.split(".")[0]
    photo, other = people_photos[0].read_bytes(), people_photos[1].read_bytes()
    jpeg = {"content-type": "image/jpeg"}
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, "PNG")
    faceless = buffer.getvalue()
    with server.client(server.admin) as admin:
        start = admin.get("/v1/audit/verify").json()["events"]
    seqs: dict[str, int] = {}
    with server.client(token) as client:
        base = f"/v1/collections/{collection}"
        person = client.post(f"{base}/persons", json={"display_name": "Ada"}).json()["id"]
        client.post(
            f"{base}/persons/{person}/consents", json={"basis": "consent", "granted_by": "Ada"}
        )
        enrolled = client.post(
            f"{base}/persons/{person}/faces",
            params={"face": "center", "purpose": "onboarding"},
            content=photo,
            headers=jpeg,
        )
        assert enrolled.status_code == 201, enrolled.text
        detected = client.post(
            "/v1/detect",
            params={"embeddings": "true", "purpose": "qa"},
            content=photo,
            headers=jpeg,
        ).json()
        seqs["detect"] = detected["audit_seq"]
        vector = detected["faces"][0]["embedding"]
        found = client.post(
            f"{base}/identify", params={"purpose": "door"}, content=other, headers=jpeg
        ).json()
        seqs["identify"] = found["faces"][0]["audit_seq"]
        by_vector = client.post(
            f"{base}/identify", params={"purpose": "door"}, json={"embeddings": [vector]}
        ).json()
        seqs["identify-embedding"] = by_vector["faces"][0]["audit_seq"]
        seqs["verify"] = client.post(
            "/v1/verify",
            params={
                "collection": collection,
                "person": person,
                "face": "center",
                "purpose": "check",
            },
            content=other,
            headers=jpeg,
        ).json()["audit_seq"]
        seqs["compare"] = client.post(
            "/v1/verify",
            params={"purpose": "check"},
            files={"photo": ("a.jpg", photo), "other_photo": ("b.jpg", other)},
        ).json()["audit_seq"]
        seqs["group"] = client.post(
            "/v1/group",
            params={"purpose": "check"},
            files=[("photos", ("a.jpg", photo)), ("photos", ("b.jpg", other))],
        ).json()["audit_seq"]
        nobody = client.post(
            f"{base}/identify",
            params={"purpose": "door"},
            content=faceless,
            headers={"content-type": "image/png"},
        ).json()
        assert nobody["faces"] == []
        seqs["identify-no-face"] = nobody["audit_seq"]
        similar = f"{base}/find-similar"
        review = {"purpose": "review"}
        assert client.post(similar, params=review, content=photo, headers=jpeg).is_success
        assert client.post(similar, params=review, json={"embeddings": [vector]}).is_success
        client.delete(f"{base}/persons/{person}", params={"purpose": "erasure request"})
    with server.client(server.admin) as admin:
        events = admin.get("/v1/audit", params={"after": start, "limit": 1000}).json()["items"]
        chain = admin.get("/v1/audit/verify").json()
    mine = [e for e in events if e["actor"] == key_id]
    actions = [e["action"] for e in mine]
    for action in (
        "person.create",
        "consent.grant",
        "enroll",
        "detect",
        "identify",
        "verify",
        "compare",
        "group",
        "find_similar",
        "person.delete",
    ):
        assert action in actions, actions
    by_seq = {e["seq"]: e for e in events}
    for name, seq in seqs.items():
        assert by_seq[seq]["actor"] == key_id, name
    assert by_seq[seqs["identify"]]["purpose"] == "door"
    both = sha((sha(photo) + sha(other)).encode())  # two photos: the hash of their hashes
    vector_hash = sha(np.asarray(vector, "<f4").tobytes())
    assert {name: by_seq[seq]["input_hash"] for name, seq in seqs.items()} == {
        "detect": sha(photo),
        "identify": sha(other),
        "identify-embedding": vector_hash,
        "verify": sha(other),
        "compare": both,
        "group": both,
        "identify-no-face": sha(faceless),
    }
    found_similar = [e["input_hash"] for e in mine if e["action"] == "find_similar"]
    assert found_similar == [sha(photo), vector_hash]
    assert [e["input_hash"] for e in mine if e["action"] == "enroll"] == [sha(photo)]
    assert chain["ok"] and chain["events"] >= start + len(mine), chain


def test_audit_reads_newest_first_and_pages_back(server: Server, collection: str) -> None:
    """`order=newest` gives the newest events first; `before` pages back through the rest; the
    filters apply either way."""
    with server.client(server.admin) as client:
        for n in range(4):
            made = client.post(
                f"/v1/collections/{collection}/persons", json={"display_name": f"Pager {n}"}
            )
            assert made.status_code == 201, made.text
        oldest = client.get("/v1/audit", params={"limit": 1000}).json()["items"]
        seqs = [e["seq"] for e in oldest]
        assert seqs == sorted(seqs) and len(seqs) >= 4  # the default stays oldest first
        newest = client.get("/v1/audit", params={"order": "newest", "limit": 3}).json()["items"]
        assert [e["seq"] for e in newest] == sorted(seqs, reverse=True)[:3]
        # that read is audited, listed only when asked for: a page-until-empty loop ends
        reads = client.get("/v1/audit", params={"order": "newest", "action": "audit.read"})
        assert reads.json()["items"][0]["seq"] > seqs[-1], reads.text
        page = client.get(
            "/v1/audit", params={"order": "newest", "limit": 3, "before": newest[-1]["seq"]}
        ).json()["items"]
        assert [e["seq"] for e in page] == sorted(seqs, reverse=True)[3:6]
        created = client.get(
            "/v1/audit",
            params={"order": "newest", "collection": collection, "action": "person.create"},
        ).json()["items"]
        assert len(created) >= 4 and all(e["action"] == "person.create" for e in created)
        assert [e["seq"] for e in created] == sorted((e["seq"] for e in created), reverse=True)


def test_audit_filters_by_actor_and_time_in_the_store(server: Server, collection: str) -> None:
    """``actor``, ``since`` (inclusive) and ``until`` (exclusive) return exactly the events
    that match, with any UTC offset, combined with the other filters and paged newest first."""
    tokens = [server.key(["enroll"], [collection]) for _ in range(2)]
    actors = [t.split(".")[0] for t in tokens]
    for n in range(6):
        with server.client(tokens[n % 2]) as client:
            made = client.post(
                f"/v1/collections/{collection}/persons", json={"display_name": f"Timed {n}"}
            )
            assert made.status_code == 201, made.text
    with server.client(server.admin) as client:

        def read(**params: object) -> list[dict[str, object]]:
            """The collection's ``person.create`` events (the 6 above) under ``params``."""
            query = {"collection": collection, "action": "person.create", "limit": 1000, **params}
            answer = client.get("/v1/audit", params=query)
            assert answer.status_code == 200, answer.text
            return answer.json()["items"]

        everything = read()
        assert len(everything) == 6 and {e["actor"] for e in everything} == set(actors)
        for actor in actors:  # each actor's events, no other's
            assert read(actor=actor) == [e for e in everything if e["actor"] == actor]
        assert read(actor="vk_nobody") == []
        times = [datetime.fromisoformat(str(e["at"])) for e in everything]
        assert times == sorted(times) and len(set(times)) == 6
        since, until = times[1], times[4]
        assert read(since=since.isoformat(), until=until.isoformat()) == everything[1:4]
        east = since.astimezone(timezone(timedelta(hours=5, minutes=30)))
        assert read(since=east.isoformat()) == everything[1:]  # the same instant, other offset
        assert read(until=until.isoformat().replace("+00:00", "Z")) == everything[:4]
        assert read(since=until.isoformat(), until=until.isoformat()) == []
        window = {"since": since.isoformat(), "until": until.isoformat(), "actor": actors[1]}
        expected = [e for e in everything[1:4] if e["actor"] == actors[1]][::-1]
        assert read(order="newest", **window) == expected
        first = read(order="newest", limit=1, **window)
        rest = read(order="newest", before=first[0]["seq"], **window)
        assert first + rest == expected  # paged back, the filters hold on every page
        assert read(action="consent.grant", **window) == []


def test_bad_audit_filters_are_422_problems_that_say_why(server: Server) -> None:
    """An unparseable time, one without a UTC offset, a number (not read as a Unix time: 2026
    would be 1970), one past year 9999 in UTC, and ``since`` after ``until`` are each refused
    with a problem naming the parameter."""
    later, earlier = "2026-06-02T00:00:00Z", "2026-06-01T00:00:00+00:00"
    with server.client(server.admin) as client:
        assert client.get("/v1/audit", params={"since": earlier}).status_code == 200  # control
        for params, says in (
            ({"since": "yesterday"}, "since"),
            ({"until": "2026-13-01T00:00:00Z"}, "until"),
            ({"since": "2026-06-01T00:00:00"}, "since: Input should have timezone info"),
            ({"since": "2026"}, "since: Value error, expected an ISO 8601 date-time"),
            ({"until": "9999-12-31T23:59:59-23:59"}, "until 9999-12-31T23:59:59-23:59 is out"),
            ({"since": later, "until": earlier}, "is after until"),
            ({"actor": ""}, "actor"),
        ):
            body = problem(client.get("/v1/audit", params=params), 422)
            assert says in str(body["detail"]), (params, body["detail"])


def test_seq_and_id_bounds_are_what_every_store_holds(server: Server, collection: str) -> None:
    """The largest audit seq or template id a request may name is the largest a PostgreSQL
    INTEGER holds: at the bound the store answers; above it the request is a 422, not a
    ``DataError`` answered 503 (what the fuzzer found on PostgreSQL with ``before=2**62``)."""
    with server.client(server.admin) as client:
        person = client.post(
            f"/v1/collections/{collection}/persons", json={"display_name": "Bound"}
        ).json()["id"]
        faces = f"/v1/collections/{collection}/persons/{person}/faces"
        for name in ("after", "before"):
            at_bound = client.get("/v1/audit", params={name: MAX_INTEGER})
            assert at_bound.status_code == 200, at_bound.text
            problem(client.get("/v1/audit", params={name: MAX_INTEGER + 1}), 422)
        problem(client.delete(f"{faces}/{MAX_INTEGER}"), 404)  # no such template
        problem(client.delete(f"{faces}/{MAX_INTEGER + 1}"), 422)


def test_a_purpose_holding_a_nul_is_audited_escaped_not_a_503(
    server: Server, collection: str
) -> None:
    """Fuzzing on PostgreSQL sent ``purpose=%00…`` to find-similar: PostgreSQL's text cannot
    hold a NUL, so the audit append failed and the search answered 503. Every string the audit
    stores is escaped the one way (``storable``): the search answers and its event says
    ``\\x00``, on both stores, and the chain still verifies."""
    probe = {"embeddings": [[1 / 128**0.5] * 128]}
    with server.client(server.admin) as client:
        for route in ("identify", "find-similar"):
            answer = client.post(
                f"/v1/collections/{collection}/{route}",
                params={"purpose": "door\x00check"},
                json=probe,
            )
            assert answer.status_code == 200, answer.text
        events = client.get("/v1/audit", params={"collection": collection}).json()["items"]
        chain = client.get("/v1/audit/verify").json()
    assert [e["purpose"] for e in events[-2:]] == ["door\\x00check"] * 2, events[-2:]
    assert chain["ok"], chain
