"""Several server processes on one store: ``visage serve --workers 2`` (two processes on one
port) answers searches at once, each audited, the chain linear across both; and two servers
sharing one store (SQLite or PostgreSQL) take enrollments, searches and deletions from eight
threads at once, each answer right and the chain whole afterwards."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .conftest import Server, start_beside, start_server, stop_server
from .test_exposure import enrolled, unit

STORES = ("sqlite", "postgresql")  # tests/server/conftest.py: once on each store


def workers(parent: int) -> list[int]:
    """The pids of ``parent``'s children that multiprocessing started (uvicorn's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_two_worker_processes_share_the_port_the_store_and_one_chain(
    tmp_path: Path, store: str | None
) -> None:
    server = start_server(tmp_path, store=store, workers="2", threads="2")
    try:
        with server.client(server.admin) as admin:
            assert admin.post("/v1/collections", json={"name": "workers"}).status_code == 201
        templates = enrolled(server, "workers", 12)
        rng = np.random.default_rng(5)
        probes = [(i % 12, templates[i % 12]) for i in range(80)] + [
            (None, unit(rng)) for _ in range(20)
        ]

        def ask(probe: tuple[int | None, list[float]]) -> tuple[int | None, int, Any]:
            with server.client(server.admin) as client:
                answer = client.post(
                    "/v1/collections/workers/identify",
                    params={"purpose": "test"},
                    json={"embeddings": [probe[1]]},
                )
            return probe[0], answer.status_code, answer.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, probes))
        assert all(status == 200 for _, status, _ in answers), [a for a in answers if a[1] != 200][
            :3
        ]
        for who, _, body in answers:
            face = body["faces"][0]
            best = face["candidates"][0] if face["candidates"] else None
            if who is None:
                assert face["unknown"]
            else:
                assert not face["unknown"] and best["external_id"] == f"ext-{who}"
        seqs = [body["faces"][0]["audit_seq"] for _, _, body in answers]
        assert len(set(seqs)) == len(probes)
        with server.client(server.admin) as admin:
            chain = admin.get("/v1/audit/verify").json()
            events = admin.get("/v1/audit", params={"action": "identify", "limit": 500}).json()
        assert chain["ok"], chain
        assert {e["seq"] for e in events["items"]} >= set(seqs)
        assert len(workers(server.process.pid)) == 2
    finally:
        stop_server(server)


ROUNDS = 6  # per thread: enroll, identify on the other server, delete, identify again
THREADS = 8


def _round(servers: tuple[Server, Server], collection: str, thread: int, n: int) -> list[int]:
    """One person's life in ``collection``, alternating servers: created, consented and enrolled
    on one; identified on the other (must be found); deleted there; identified on the first
    (must not be found: its index learned of a deletion by another process). Returns the
    audit seqs of the two identifications."""
    rng = np.random.default_rng(1000 * thread + n)
    vector = unit(rng)
    here, there = servers[n % 2], servers[1 - n % 2]
    base = f"/v1/collections/{collection}"
    name = f"w{thread}-{n}"
    seqs: list[int] = []
    with here.client(here.admin) as a, there.client(there.admin) as b:
        person = a.post(f"{base}/persons", json={"display_name": name, "external_id": name})
        assert person.status_code == 201, person.text
        pid = person.json()["id"]
        consent = {"basis": "consent", "granted_by": "t"}
        assert a.post(f"{base}/persons/{pid}/consents", json=consent).status_code == 201
        face = a.post(
            f"{base}/persons/{pid}/faces", params={"purpose": "t"}, json={"embedding": vector}
        )
        assert face.status_code == 201, face.text
        for client, expected in ((b, name), (a, None)):
            found = client.post(
                f"{base}/identify", params={"purpose": "t"}, json={"embeddings": [vector]}
            )
            assert found.status_code == 200, found.text
            answer = found.json()["faces"][0]
            best = answer["candidates"][0] if answer["candidates"] else None
            who = best["external_id"] if best and best["same"] else None
            assert who == expected, (name, expected, answer)
            seqs.append(answer["audit_seq"])
            if expected is not None:
                assert b.delete(f"{base}/persons/{pid}").status_code == 200
    return seqs


def test_writers_on_two_servers_sharing_one_store_keep_one_chain(
    tmp_path: Path, store: str | None
) -> None:
    """Eight threads enroll, identify and delete at once over HTTP, each person's life split
    between two server processes on one store (SQLite, PostgreSQL): every answer is right
    (an enrollment on one process is found by the other; a deletion on one is never found by
    the other), every audited call is in the chain once, and the chain verifies on both."""
    first = start_server(tmp_path / "a", store=store, rate_limit="0", threads="4")
    second = start_beside(first, tmp_path / "b", rate_limit="0", threads="4")
    try:
        with first.client(first.admin) as admin:
            assert admin.post("/v1/collections", json={"name": "writers"}).status_code == 201
            start = admin.get("/v1/audit/verify").json()["events"]
        enrolled(first, "writers", 4)  # persons who stay, so a search has company
        servers = (first, second)
        jobs = [(t, n) for t in range(THREADS) for n in range(ROUNDS)]
        with ThreadPoolExecutor(THREADS) as pool:
            done = list(pool.map(lambda job: _round(servers, "writers", *job), jobs))
        seqs = [s for one in done for s in one]
        assert len(seqs) == 2 * len(jobs) and len(set(seqs)) == len(seqs)
        for server in servers:
            with server.client(server.admin) as admin:
                chain = admin.get("/v1/audit/verify").json()
                assert chain["ok"], chain
        events = {}
        with first.client(first.admin) as admin:
            after = start
            while page := admin.get("/v1/audit", params={"after": after, "limit": 1000}).json()[
                "items"
            ]:
                events.update({e["seq"]: e["action"] for e in page})
                after = page[-1]["seq"]
            persons = admin.get("/v1/collections/writers/persons", params={"limit": 1000}).json()
        assert all(events[seq] == "identify" for seq in seqs)
        actions = list(events.values())
        assert actions.count("person.delete") == len(jobs)
        assert actions.count("enroll") == len(jobs) + 4
        assert chain["events"] >= start + 4 * len(jobs)  # create, consent, enroll, delete each
        assert {p["external_id"] for p in persons["items"]} == {f"ext-{i}" for i in range(4)}
    finally:
        stop_server(first)
        stop_server(second)
