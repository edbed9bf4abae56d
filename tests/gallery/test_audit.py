"""The audit hash chain: intact after real work, and tampering names the broken link."""

from __future__ import annotations

import itertools

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from visage.gallery import Gallery
from visage.store import Base, database_url, default_url

from .synthetic import consented_person, unit_vectors


def _fill(gallery: Gallery) -> int:
    """Some real activity; returns the number of audit events."""
    ada = consented_person(gallery, "Ada")
    for v in unit_vectors(3, seed=1):
        gallery.enroll("people", ada, v)
    gallery.identify("people", unit_vectors(1, seed=2)[0])
    report = gallery.verify_audit()
    assert report.ok, report.describe()
    return report.events


def _execute(url: str, sql: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


def test_chain_is_intact_and_links_each_event_to_the_last(gallery: Gallery) -> None:
    n = _fill(gallery)
    events = gallery.audit_events(limit=100)
    assert [e.seq for e in events] == list(range(1, n + 1))
    assert events[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert gallery.verify_audit().head == events[-1].hash


@pytest.mark.parametrize(
    ("sql", "broken", "why"),
    [
        ("UPDATE audit_event SET actor = 'mallory' WHERE seq = 4", 4, "contents do not match"),
        ("UPDATE audit_event SET summary = '{}' WHERE seq = 6", 6, "contents do not match"),
        ("DELETE FROM audit_event WHERE seq = 3", 3, "is missing"),
        ("DELETE FROM audit_event WHERE seq = (SELECT max(seq) FROM audit_event)", -1, "missing"),
        ("UPDATE audit_event SET prev_hash = hash WHERE seq = 5", 5, "prev_hash"),
    ],
)
def test_tampering_names_the_first_broken_link(
    gallery: Gallery, db_url: str, sql: str, broken: int, why: str
) -> None:
    n = _fill(gallery)
    _execute(db_url, sql)
    report = gallery.verify_audit()
    assert not report.ok
    assert report.broken_seq == (n if broken == -1 else broken)
    assert why in (report.reason or "")
    assert f"event {report.broken_seq}" in report.describe()


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    Gallery(db_url).close()  # opening migrates
    engine = create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_database_location(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("VISAGE_DB", "/data/v.db")
    assert default_url() == "sqlite:////data/v.db"
    monkeypatch.setenv("VISAGE_DB", "postgresql+psycopg://u@h/db")
    assert default_url() == "postgresql+psycopg://u@h/db"
    monkeypatch.delenv("VISAGE_DB")
    assert default_url().endswith("/.local/share/visage/visage.db")
    assert database_url("relative.db").startswith("sqlite:////")
