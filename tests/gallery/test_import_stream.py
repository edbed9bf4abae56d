"""``visage import`` streams (issue 18, items 1 and 9).

An import reads its file a line at a time and writes :data:`IMPORT_BATCH` persons a transaction
into a staging collection no name reaches, published by its last transaction: memory does not
grow with the file, other writers and searches go on between batches, nobody sees half an
import, and a refused or crashed import leaves none of its templates in the store's files.
The header must name a known model at its embedding size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from visage.errors import ConsentError, NotFound
from visage.gallery import Gallery
from visage.gallery.service import IMPORT_BATCH
from visage.store import CollectionRow

from .forensics import holders, stored_embeddings, stored_ids
from .synthetic import unit_vectors, visage_peak_kib, write_export

ROOT = Path(__file__).resolve().parents[2]


def visage(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "visage", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"dim": 4}, "dim 4 is not model 'dlib_resnet_v1''s embedding size (128)"),
        ({"dim": 0}, "dim 0 is not"),
        ({"dim": -5}, "dim -5 is not"),
        ({"dim": 512}, "dim 512 is not"),
        ({"model_id": "mystery-v9"}, "unknown model 'mystery-v9'"),
    ],
)
def test_a_header_outside_the_known_models_is_refused(
    tmp_path: Path, header: dict[str, object], message: str
) -> None:
    db = f"sqlite:///{tmp_path / 'g.db'}"
    good = visage("import", str(write_export(tmp_path / "good.jsonl", 3)), "--db", db, "--json")
    assert good.returncode == 0 and json.loads(good.stdout)["persons"] == 3, good.stderr
    bad = write_export(tmp_path / "bad.jsonl", 3, header=header)
    refused = visage("import", str(bad), "--db", db, "--collection", "other")
    assert refused.returncode == 1, refused
    assert refused.stderr.strip().splitlines() == [f"error: {bad} line 1: " + message] or (
        message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    ), refused.stderr
    with Gallery(db) as g:
        assert [c.name for c in g.collections()] == ["imported"]
        assert g.audit_events(limit=1, newest_first=True)[0].action == "collection.import.refused"


def test_an_import_paused_between_batches_blocks_no_writer_and_shows_nothing(
    db_url: str, tmp_path: Path
) -> None:
    total = 3 * IMPORT_BATCH + 7
    path = write_export(tmp_path / "e.jsonl", total)
    reached, release = threading.Event(), threading.Event()

    calls: list[tuple[int, int]] = []

    def pause(done: int, size: int) -> None:
        calls.append((done, size))
        if not reached.is_set():
            reached.set()
            release.wait(120)

    with Gallery(db_url, actor="importer") as importer, Gallery(db_url, actor="other") as other:
        worker = threading.Thread(
            target=importer.import_collection, args=(path,), kwargs={"progress": pause}
        )
        worker.start()
        try:
            assert reached.wait(120)
            assert 0 < calls[0][0] < calls[0][1]  # bytes read so far, of the file's size
            # The positive control: the first batch really is in the store by now.
            assert stored_ids(db_url, "SELECT count(*) FROM person") == [IMPORT_BATCH]
            started = time.monotonic()
            other.create_collection("staff", model_id="dlib_resnet_v1")
            person = other.add_person("staff", "Ada")
            other.grant_consent("staff", person.id, basis="consent", granted_by="Ada")
            vector = unit_vectors(1, seed=99)[0]
            other.enroll("staff", person.id, vector)
            found = other.identify("staff", vector, purpose="test")
            assert time.monotonic() - started < 10
            assert found.candidates[0].person_id == person.id
            assert [c.name for c in other.collections()] == ["staff"]
            with pytest.raises(NotFound):
                other.collection("imported")
        finally:
            release.set()
            worker.join(120)
        assert not worker.is_alive()
        assert other.collection("imported").persons == total
        assert other.verify_audit().ok


def test_a_refusal_after_the_first_batches_leaves_no_byte_behind(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    url = f"sqlite:///{db}"
    path = write_export(tmp_path / "e.jsonl", 2 * IMPORT_BATCH + 5)
    lines = path.read_text().splitlines()
    bad_line = 2 * IMPORT_BATCH + 3
    record = json.loads(lines[bad_line - 1])
    record["consents"] = []  # templates without consent: refused, as enrollment refuses them
    lines[bad_line - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    staged: list[bytes] = []

    def look(done: int, size: int) -> None:
        if not staged:
            staged.extend(stored_embeddings(url, "1=1"))
            assert len(staged) == IMPORT_BATCH and holders(db, staged)  # the positive control

    with Gallery(url, actor="importer") as g:
        with pytest.raises(ConsentError, match=f"line {bad_line}: person"):
            g.import_collection(path, progress=look)
        assert staged and holders(db, staged) == {}  # store, WAL and index, while open
        assert g.collections() == []
        assert stored_ids(url, "SELECT count(*) FROM person") == [0]
        last = g.audit_events(limit=1, newest_first=True)[0]
        assert last.action == "collection.import.refused" and f"line {bad_line}" in str(
            last.summary
        )
        assert g.verify_audit().ok


CRASHING_IMPORT = """
import sys, time
from pathlib import Path
from visage.gallery import Gallery

def stop(done, size):
    Path(sys.argv[3]).touch()
    time.sleep(600)

Gallery(sys.argv[1]).import_collection(sys.argv[2], progress=stop)
"""


def test_a_crashed_import_is_invisible_and_erased_by_the_next(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    url = f"sqlite:///{db}"
    path = write_export(tmp_path / "e.jsonl", IMPORT_BATCH + 1)
    flag = tmp_path / "batch-written"
    child = subprocess.Popen([sys.executable, "-c", CRASHING_IMPORT, url, str(path), str(flag)])
    try:
        for _ in range(600):
            if flag.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert flag.exists(), "the import never wrote its first batch"
    finally:
        child.kill()
        child.wait()
    staged = stored_embeddings(url, "1=1")
    assert len(staged) == IMPORT_BATCH and holders(db, staged)  # the positive control
    with Gallery(url) as g:
        assert g.collections() == []  # the staged half is not a collection
        engine = create_engine(url)
        with Session(engine) as session, session.begin():  # ten minutes later …
            session.execute(
                update(CollectionRow).values(created_at=datetime(2026, 1, 1, tzinfo=UTC))
            )
        engine.dispose()
        g.import_collection(write_export(tmp_path / "small.jsonl", 2, seed=5), name="second")
        assert [c.name for c in g.collections()] == ["second"]
        assert holders(db, staged) == {}


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Peak RSS of ``visage import`` for a 40,000-person file (~48 MB) against a 1-person file:
    it grows by less than half the file (~10 MB measured; reading it whole grew by ~4.6× the file)."""
    small = write_export(tmp_path / "small.jsonl", 1)
    large = write_export(tmp_path / "large.jsonl", 40_000, seed=1)

    def peak_kib(path: Path, db: str) -> int:
        status, kib = visage_peak_kib("import", str(path), "--db", db, "--json")
        assert status == 0
        return kib

    base = peak_kib(small, f"sqlite:///{tmp_path / 'a.db'}")
    peak = peak_kib(large, f"sqlite:///{tmp_path / 'b.db'}")
    grown = (peak - base) * 1024
    assert grown < large.stat().st_size / 2, (base, peak, large.stat().st_size)
