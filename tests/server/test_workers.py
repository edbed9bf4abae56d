"""``visage serve --workers 2``: two processes on one port and one store answer searches at once,
each audited, the chain linear across both."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .conftest import start_server, stop_server
from .test_exposure import enrolled, unit


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


def test_two_worker_processes_share_the_port_the_store_and_one_chain(tmp_path: Path) -> None:
    server = start_server(tmp_path, workers="2", threads="2")
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
