"""Crash safety: SIGKILL a process mid-enrollment and mid-deletion, reopen, find everything whole.

After the kill: the store holds only whole batches (a batch is one transaction), every deleted
person is entirely gone and every other one entirely present, the index agrees with the store
template for template, and the audit chain verifies with one event per change.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from visage.gallery import EmbeddingItem, Gallery

from .synthetic import CALIBRATION, MODEL, consented_person, unit_vectors

WORKER = Path(__file__).with_name("crash_worker.py")
PERSONS, PER_PERSON = 40, 25


def _setup(url: str, index_dir: Path, *, enrolled: bool) -> list[str]:
    with Gallery(url, index_dir=index_dir, calibrations=[CALIBRATION]) as g:
        g.create_collection("people", model_id=MODEL)
        ids = [consented_person(g, f"P{i}") for i in range(PERSONS)]
        if enrolled:
            vectors = unit_vectors(PERSONS * PER_PERSON, seed=1)
            g.enroll_many(
                "people", [EmbeddingItem(ids[i % PERSONS], v) for i, v in enumerate(vectors)]
            )
            g.index("people")
        return ids


def _kill_after(url: str, index_dir: Path, mode: str, commits: int, delay: float) -> int:
    """Start the worker, wait for ``commits`` commits plus ``delay`` s, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), url, str(index_dir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = 0
    deadline = time.monotonic() + 120
    while seen < commits and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line.startswith("committed")
    assert seen == commits, f"worker stopped early: {proc.stderr.read() if proc.stderr else ''}"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen


def _store(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return rows


def _check_consistent(url: str, index_dir: Path) -> None:
    with Gallery(url, index_dir=index_dir, calibrations=[CALIBRATION]) as g:
        store_ids = sorted(r[0] for r in _store(url, "SELECT id FROM template"))
        assert g.index("people").ids().tolist() == store_ids
        report = g.verify_audit()
        assert report.ok, report.describe()


def test_sigkill_during_enrollment(db_url: str, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    _setup(db_url, index_dir, enrolled=False)
    for round_, delay in enumerate((0.05, 0.2)):
        _kill_after(db_url, index_dir, "enroll", 2, delay)
        _check_consistent(db_url, index_dir)
        (templates,) = _store(db_url, "SELECT count(*) FROM template")[0]
        assert templates % 400 == 0 and templates >= 400 * 2 * (round_ + 1)
        (events,) = _store(db_url, "SELECT count(*) FROM audit_event WHERE action = 'enroll'")[0]
        assert events == templates  # one event per template, none without its template


def test_sigkill_during_deletion(db_url: str, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    ids = _setup(db_url, index_dir, enrolled=True)
    _kill_after(db_url, index_dir, "delete", 3, 0.01)
    _check_consistent(db_url, index_dir)
    counts = dict(_store(db_url, "SELECT person_id, count(*) FROM template GROUP BY person_id"))
    people = {r[0] for r in _store(db_url, "SELECT id FROM person")}
    gone = [p for p in ids if p not in people]
    assert len(gone) >= 3
    assert all(counts.get(p) == PER_PERSON for p in people)  # survivors are whole
    assert all(p not in counts for p in gone)  # the deleted have no template left
    (deletes,) = _store(db_url, "SELECT count(*) FROM audit_event WHERE action = 'person.delete'")[
        0
    ]
    assert deletes == len(gone)
    vectors = unit_vectors(PERSONS * PER_PERSON, seed=1)
    with Gallery(db_url, index_dir=index_dir, calibrations=[CALIBRATION]) as g:
        for i, person in enumerate(ids):
            found = g.identify("people", vectors[i]).best
            if person in gone:
                assert found is None or found.person_id != person
            else:
                assert found is not None and found.person_id == person


def test_sigkill_during_searches_loses_no_answered_event(db_url: str, tmp_path: Path) -> None:
    """Searches' audit events are group-committed: every answer a client got before the kill
    has its event in the chain, none is half-written."""
    index_dir = tmp_path / "index"
    _setup(db_url, index_dir, enrolled=True)
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), db_url, str(index_dir), "search"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    answered: list[int] = []
    deadline = time.monotonic() + 120
    while len(answered) < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        answered.append(int(line.split()[1]))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(answered) == 300, (
        f"worker stopped early: {proc.stderr.read() if proc.stderr else ''}"
    )
    assert len(set(answered)) == len(answered)  # each answer its own event
    _check_consistent(db_url, index_dir)
    stored = dict(_store(db_url, "SELECT seq, action FROM audit_event"))
    assert all(stored.get(seq) == "identify" for seq in answered)
    assert len(stored) >= len(answered)
