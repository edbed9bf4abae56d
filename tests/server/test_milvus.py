"""Two ``visage serve`` processes (two ports) on one PostgreSQL and one Milvus (``--index
milvus:<uri>``) hold no index of their own: a person enrolled on one is identified on the
other, deleted there and no longer found on the first, and the deleted vectors are gone from
every Milvus file; the audit chain stays one linear chain across both."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import MilvusServer, pg_database
from tests.gallery.forensics import folder_holders
from visage.decision import unit_embedding

from .conftest import start_beside, start_server, stop_server
from .test_exposure import enrolled, unit
from .test_workers import _round


def _stored(vector: list[float]) -> bytes:
    """The 512 bytes the server stores (and hands Milvus) for an enrolled ``vector``."""
    return unit_embedding(vector, 128).astype("<f4").tobytes()


def test_two_servers_on_one_milvus_answer_alike(
    tmp_path: Path, pg_server: str, milvus_server: MilvusServer
) -> None:
    index = f"milvus:{milvus_server.uri}"
    with pg_database(pg_server) as url:
        first = start_server(tmp_path / "a", store=url, index=index, rate_limit="0")
        second = start_beside(first, tmp_path / "b", index=index, rate_limit="0")
        try:
            with first.client(first.admin) as admin:
                assert admin.post("/v1/collections", json={"name": "m"}).status_code == 201
            stay = enrolled(first, "m", 4)  # company for the searches, enrolled on the first
            seqs: list[int] = []
            for n in range(4):  # enroll on one, identify + delete on the other, then identify
                seqs += _round((first, second), "m", 0, n)
            assert len(set(seqs)) == len(seqs) == 8
            kept = [_stored(v) for v in stay]
            assert folder_holders(milvus_server.data, kept), "control: Milvus holds them"
            gone = [_stored(unit(np.random.default_rng(n))) for n in range(4)]  # _round's
            assert folder_holders(milvus_server.data, gone) == {}
            for server in (first, second):
                with server.client(server.admin) as admin:
                    chain = admin.get("/v1/audit/verify").json()
                    assert chain["ok"], chain
        finally:
            stop_server(first)
            stop_server(second)
    for server in (first, second):
        assert "Traceback" not in server.log_tail(100_000), server.log_tail()
