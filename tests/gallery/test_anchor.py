"""Signed checkpoints outside the database name a cut tail that the hash chain alone cannot see.

The attack (issue 11, item 7): delete the newest rows of ``audit_event`` and reset
``gallery_state`` to the new last event, or delete every event; the chain still links, so
``visage audit verify`` used to pass. Each test performs it against a real store (SQLite and
PostgreSQL) and runs the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from visage.gallery import Gallery
from visage.signing import generate_signing_key, key_id
from visage.store import AuditRow, audit
from visage.store.anchor import Checkpoint

from .synthetic import CALIBRATION, MODEL, consented_person, unit_vectors


@pytest.fixture
def anchored(db_url: str, tmp_path: Path) -> Iterator[tuple[Gallery, Path]]:
    """A gallery with some real activity and its anchor file (chosen, not the default)."""
    anchors = tmp_path / "elsewhere" / "audit.anchors"
    with Gallery(db_url, index_dir=tmp_path / "index", calibrations=[CALIBRATION],
                 actor="tester", anchors=anchors) as g:
        g.create_collection("people", model_id=MODEL)
        ada = consented_person(g, "Ada")
        for v in unit_vectors(3, seed=1):
            g.enroll("people", ada, v)
        g.identify("people", unit_vectors(1, seed=2)[0])
        yield g, anchors


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "visage", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


def _sql(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def _cut_to(url: str, keep: int) -> None:
    """What the attacker did: delete events after ``keep`` and point the state row at the new tail."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq > :keep"), {"keep": keep})
        head = conn.execute(text("SELECT hash FROM audit_event WHERE seq = :keep"),
                            {"keep": keep}).scalar() or audit.GENESIS
        conn.execute(text("UPDATE gallery_state SET audit_seq = :keep, audit_head = :head"),
                     {"keep": keep, "head": head})
    engine.dispose()


def test_intact_log_verifies_against_its_checkpoints(
    anchored: tuple[Gallery, Path], db_url: str
) -> None:
    g, anchors = anchored
    n = g.verify_audit().events
    lines = anchors.read_text().splitlines()
    assert len(lines) == n, "one checkpoint per committed audited transaction"
    newest = Checkpoint.parse(lines[-1])
    assert (newest.seq, newest.head) == (n, g.verify_audit().head)
    assert "signature" in json.loads(lines[-1]) and not any("embedding" in x for x in lines)
    done = _cli("audit", "verify", "--db", db_url, "--anchors", str(anchors), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["anchored_seq"] == n, report


def test_cut_tail_is_named_with_the_checkpoint_that_proves_it(
    anchored: tuple[Gallery, Path], db_url: str
) -> None:
    g, anchors = anchored
    n = g.verify_audit().events
    _cut_to(db_url, n - 2)
    assert chain_alone(db_url).ok, "the attack works against the chain alone"
    done = _cli("audit", "verify", "--db", db_url, "--anchors", str(anchors))
    assert done.returncode != 0
    at = Checkpoint.parse(anchors.read_text().splitlines()[-1]).at
    assert f"chain ends at seq {n - 2} but a checkpoint says {n}, signed at {at}" in done.stderr
    assert "Traceback" not in done.stderr


def test_deleting_every_event_is_not_an_intact_empty_log(
    anchored: tuple[Gallery, Path], db_url: str
) -> None:
    g, anchors = anchored
    n = g.verify_audit().events
    _cut_to(db_url, 0)
    alone = chain_alone(db_url)
    assert alone.ok and alone.events == 0, "without anchors this passed as an intact, empty log"
    done = _cli("audit", "verify", "--db", db_url, "--anchors", str(anchors), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert not report["ok"] and report["events"] == 0
    assert f"chain ends at seq 0 but a checkpoint says {n}" in report["reason"]


def test_rewritten_chain_differs_from_its_checkpoint(
    anchored: tuple[Gallery, Path], db_url: str
) -> None:
    """Edit event 2 and recompute every later hash and the state row: the chain links again,
    the signed head it had no longer matches."""
    g, anchors = anchored
    _sql(db_url, "UPDATE audit_event SET actor = 'mallory' WHERE seq = 2")
    engine = create_engine(db_url)
    with engine.begin() as conn:
        prev = conn.execute(text("SELECT hash FROM audit_event WHERE seq = 1")).scalar_one()
        for row in conn.execute(text("SELECT * FROM audit_event WHERE seq > 1 ORDER BY seq")).all():
            fixed = AuditRow(**{**row._asdict(), "prev_hash": prev})
            prev = audit.event_hash(fixed)
            conn.execute(text("UPDATE audit_event SET prev_hash = :p, hash = :h WHERE seq = :s"),
                         {"p": fixed.prev_hash, "h": prev, "s": row.seq})
        conn.execute(text("UPDATE gallery_state SET audit_head = :h"), {"h": prev})
    engine.dispose()
    assert chain_alone(db_url).ok
    report = g.verify_audit(anchors=anchors)
    assert not report.ok and report.broken_seq == 2
    assert "differs from the checkpoint signed at" in (report.reason or "")


def test_checkpoints_signed_by_another_key_are_refused(
    anchored: tuple[Gallery, Path], db_url: str
) -> None:
    """An attacker who can write the anchor file but lacks the key cannot re-anchor a cut chain."""
    g, anchors = anchored
    n = g.verify_audit().events
    _cut_to(db_url, n - 1)
    head = chain_alone(db_url).head
    forger = generate_signing_key()
    at = "2030-01-01T00:00:00.000000+00:00"
    forged = Checkpoint(n - 1, head, at, key_id(forger.public_key()),
                        forger.sign(Checkpoint.message(n - 1, head, at)))
    anchors.write_bytes(forged.line())
    pinned = g.anchor_public_key()
    done = _cli("audit", "verify", "--db", db_url, "--anchors", str(anchors),
                "--public-key", pinned)
    assert done.returncode != 0
    assert "not signed by the trusted key" in done.stderr


def chain_alone(url: str) -> audit.ChainReport:
    """The hash chain check without anchors (all that ``audit verify`` did before)."""
    engine = create_engine(url)
    with Session(engine) as session:
        report = audit.verify_chain(session)
    engine.dispose()
    return report


def test_a_checkpoint_written_while_the_chain_is_read_is_not_a_cut(
    anchored: tuple[Gallery, Path], db_url: str
) -> None:
    """The race the console found: an event committed (and checkpointed) after verify read the
    chain made an intact log read as cut. Only checkpoints in the anchor file when the read
    began count; the same cut made before the verification began is still named."""
    g, anchors = anchored
    n = g.verify_audit().events
    before = anchors.stat().st_size  # a verification starting now, its chain read at n events
    g.identify("people", unit_vectors(1, seed=3)[0])  # commits n + 1 and checkpoints it
    _cut_to(db_url, n)  # the chain as that verification's snapshot saw it
    key = Gallery._trusted_anchor_key(anchors, None)
    engine = create_engine(db_url)
    with Session(engine) as session:
        late = audit.verify_anchored(session, anchors, key, before)
        now = audit.verify_anchored(session, anchors, key)  # begun after the checkpoint
    engine.dispose()
    assert late.ok and late.events == n, late.reason
    assert not now.ok and f"a checkpoint says {n + 1}" in (now.reason or ""), now
