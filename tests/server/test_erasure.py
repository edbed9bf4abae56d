"""Deletions through the API and the CLI, on one store, while the server runs: afterwards no file
of the store (``.db``, ``-wal``, ``-shm``, index snapshots) holds a byte of an erased template,
neither while the server is still running nor after it stopped and saved its indexes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from visage.store import database_url

from ..gallery.forensics import holders, stored_embeddings
from .conftest import start_server, stop_server

JPEG = {"content-type": "image/jpeg"}


def test_api_and_cli_erasures_leave_no_byte_in_the_running_stores_files(
    tmp_path: Path, faces_dir: Path
) -> None:
    def photo(name: str, n: int) -> bytes:
        return (faces_dir / "people" / name / f"{name}_{n:04d}.jpg").read_bytes()

    server = start_server(tmp_path / "server")
    url = database_url(server.db)
    stopped = False
    try:
        ids: dict[str, str] = {}
        with server.client(server.admin) as client:
            for coll in ("erasure", "doomed"):
                assert client.post("/v1/collections", json={"name": coll}).status_code == 201
            enrolment = {  # who: (collection, photo)
                "deleted-by-api": ("erasure", photo("Al_Sharpton", 1)),
                "survivor": ("erasure", photo("Al_Sharpton", 2)),
                "deleted-by-cli": ("erasure", photo("Alvaro_Uribe", 1)),
                "revoked": ("erasure", photo("Angelina_Jolie", 1)),
                "in-deleted-collection": ("doomed", photo("Angelina_Jolie", 2)),
            }
            for who, (coll, data) in enrolment.items():
                base = f"/v1/collections/{coll}/persons"
                ids[who] = client.post(base, json={"display_name": who}).json()["id"]
                granted = client.post(
                    f"{base}/{ids[who]}/consents", json={"basis": "consent", "granted_by": who}
                )
                assert granted.status_code == 201, granted.text
                enrolled = client.post(
                    f"{base}/{ids[who]}/faces", params={"face": "center"}, content=data,
                    headers=JPEG,
                )
                assert enrolled.status_code == 201, enrolled.text
            for coll in ("erasure", "doomed"):  # the server builds its indexes and saves them
                found = client.post(
                    f"/v1/collections/{coll}/identify", params={"face": "center", "purpose": "test"},
                    content=photo("Alvaro_Uribe", 2), headers=JPEG,
                )
                assert found.status_code == 200, found.text
            blobs = {
                who: stored_embeddings(url, "person_id = :p", p=pid) for who, pid in ids.items()
            }
            for who, stored in blobs.items():  # control: each is in the files, snapshot included
                where = holders(server.db, stored)
                assert len(stored) == 1 and any(n.endswith(".npz") for n in where), (who, where)

            revoked = client.post(
                f"/v1/collections/erasure/persons/{ids['revoked']}/consents/revoke", json={}
            )
            assert revoked.json() == {"templates_removed": 1}, revoked.text
            assert holders(server.db, blobs["revoked"]) == {}
            gone = client.delete("/v1/collections/doomed")
            assert gone.json() == {"templates_removed": 1}, gone.text
            assert holders(server.db, blobs["in-deleted-collection"]) == {}
            deleted = client.delete(f"/v1/collections/erasure/persons/{ids['deleted-by-api']}")
            assert deleted.json() == {"templates_removed": 1}, deleted.text
            assert holders(server.db, blobs["deleted-by-api"]) == {}

        # Another process deletes on the same store: the server's index, ahead of its snapshot
        # since the API deletion, is now behind the store.
        cli = subprocess.run(
            [sys.executable, "-m", "visage", "persons", "delete", ids["deleted-by-cli"],
             "-c", "erasure", "--yes", "--db", str(server.db)],
            check=False, capture_output=True, text=True, timeout=120,
        )
        assert cli.returncode == 0, cli.stderr
        assert holders(server.db, blobs["deleted-by-cli"]) == {}

        stop_server(server)  # closing the gallery saves indexes: never the stale one
        stopped = True
        assert "Traceback" not in server.log_tail(100_000), server.log_tail()
        for who in ("deleted-by-api", "deleted-by-cli", "revoked", "in-deleted-collection"):
            assert holders(server.db, blobs[who]) == {}, who
        assert holders(server.db, blobs["survivor"]).get("gallery.db"), "control: survivor kept"
    finally:
        if not stopped:
            stop_server(server)
