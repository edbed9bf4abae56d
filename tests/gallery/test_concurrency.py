"""Searches run beside writers, in threads and processes, without the writers' lock.

Two processes, each with three searching threads, one enrolling and one deleting, on one store
(SQLite and PostgreSQL). Afterwards: the chain verifies; every answer's audit event is in it and
names the candidate answered; no search that started after a deletion had returned found the
deleted person; every search for a person enrolled before it started (and not deleted) found
them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from visage.gallery import EmbeddingItem, Gallery

from .synthetic import CALIBRATION, MODEL, consented_person, unit_vectors

WORKER = Path(__file__).with_name("concurrency_worker.py")
PERSONS = 40


def test_searches_enrollments_and_deletions_at_once(db_url: str, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    with Gallery(db_url, index_dir=index_dir, calibrations=[CALIBRATION]) as g:
        g.create_collection("people", model_id=MODEL)
        ids = [consented_person(g, f"P{i}") for i in range(PERSONS)]
        g.enroll_many(
            "people", [EmbeddingItem(p, v) for p, v in zip(ids, unit_vectors(PERSONS, seed=1))]
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), *sys.path])}
    workers = [
        subprocess.Popen([sys.executable, str(WORKER), db_url, str(index_dir), str(part)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for part in (0, 1)
    ]  # fmt: skip
    records: list[dict[str, Any]] = []
    for proc in workers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        records += [json.loads(line) for line in out.splitlines()]
    searches = [r for r in records if r["op"] == "identify"]
    deleted = {r["name"]: r["end"] for r in records if r["op"] == "delete"}
    enrolled = {r["name"]: r["end"] for r in records if r["op"] == "enroll"}
    assert len(deleted) == 24 and len(enrolled) == 24 and len(searches) > 100

    with Gallery(db_url, index_dir=index_dir, calibrations=[CALIBRATION]) as g:
        report = g.verify_audit()
        assert report.ok, report.describe()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        events = {
            seq: (action, json.loads(summary))
            for seq, action, summary in conn.execute(text("SELECT seq, action, summary FROM audit_event"))
        }  # fmt: skip
    engine.dispose()
    for s in searches:
        action, summary = events[s["seq"]]
        assert action == "identify"
        top = summary["candidates"][0] if summary["candidates"] else None
        assert (top["person"] if top and top["same"] else None) == s["person"]
        name = s["name"].lower()
        if name in deleted and s["start"] > deleted[name]:
            assert s["best"] != name, (
                f"{name} found {s['start'] - deleted[name]:.3f} s after its deletion"
            )
        elif (
            name in enrolled
            and s["start"] > enrolled[name]
            or name.startswith("p")
            and name not in deleted
        ):
            assert s["best"] == name, f"{name} missed"
    # positive control: deleted persons were found while they existed
    assert any(s["best"] == s["name"].lower() for s in searches if s["name"].lower() in deleted)
