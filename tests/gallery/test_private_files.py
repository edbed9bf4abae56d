"""Every file the store writes is owner-only (0600) and every folder it creates is 0700,
whatever the umask lets through: the database, its ``-wal`` and ``-shm``, index snapshots and
exports, checked with ``os.stat`` after real operations."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from visage.gallery import EmbeddingItem, Gallery

from .forensics import store_files
from .synthetic import CALIBRATION, MODEL, consented_person, unit_vectors


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask 022, under which plain ``open`` makes files 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("loose_umask")
def test_store_files_and_folders_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "home" / "visage" / "visage.db"  # two folders the store must create
    with Gallery(db, calibrations=[CALIBRATION], actor="tester") as g:
        g.create_collection("people", model_id=MODEL)
        ids = [consented_person(g, f"P{i}") for i in range(3)]
        vectors = unit_vectors(6, seed=41)
        g.enroll_many("people", [EmbeddingItem(ids[i % 3], v) for i, v in enumerate(vectors)])
        assert g.identify("people", vectors[0]).best is not None  # builds and saves a snapshot
        g.delete_person("people", ids[2])
        g.enroll("people", ids[0], unit_vectors(1, seed=42)[0])
        files = store_files(db)
        names = {p.name for p in files}
        assert {"visage.db", "visage.db-wal", "visage.db-shm"} <= names, names
        assert {_mode(p) for p in files} == {0o600}, {p.name: oct(_mode(p)) for p in files}
    files = store_files(db)
    assert any(p.suffix == ".npz" for p in files) and any(p.suffix == ".json" for p in files)
    assert {_mode(p) for p in files} == {0o600}, {p.name: oct(_mode(p)) for p in files}
    for folder in (db.parent, db.parent.parent, db.with_name("visage.db.index")):
        assert _mode(folder) == 0o700, folder

    export = tmp_path / "people.jsonl"
    export.write_text("an older, world-readable file\n")
    export.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "visage", "export", "-c", "people", "-o", str(export), "--db", str(db)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert export.read_text().startswith('{"collection": "people"')
    assert _mode(export) == 0o600
