"""The audit hash chain: intact after real work, and tampering names the broken link."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Select, create_engine, insert, text
from sqlalchemy.orm import Session

from visage.gallery import Gallery
from visage.store import Base, database_url, default_url
from visage.store.audit import GENESIS, RECENT, events, events_query, stamp
from visage.store.tables import AuditRow

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


PLANNED_EVENTS = 20_000
"""Events in the store whose query plans are asked: enough that PostgreSQL's statistics
(``ANALYZE``) price a scan of the table well above a range of an index, as on a real log."""
PLAN_START = datetime(2026, 1, 1, tzinfo=UTC)
"""The first planned event's time; one every 10 s after it."""
BUSY_KEY = "vk_0000000busy"
"""The key that makes 9 events in 10 (a deployment's edge devices, say); 200 other keys take
turns at the rest, 10 events each."""


def _planned_actor(seq: int) -> str:
    return BUSY_KEY if seq % 10 else f"vk_{seq // 10 % 200:012d}"


def _planned_at(seq: int) -> datetime:
    return PLAN_START + timedelta(seconds=10 * seq)


@pytest.fixture
def planned(db_url: str) -> Iterator[Engine]:
    """A migrated store holding :data:`PLANNED_EVENTS` events (not a chain: only their plans
    are asked), analysed on PostgreSQL as autovacuum would; SQLite keeps no statistics unless
    asked, and a deployment does not ask, so neither does this."""
    Gallery(db_url).close()  # opening migrates
    engine = create_engine(db_url)
    rows = [
        {"seq": seq, "at": stamp(_planned_at(seq)), "actor": _planned_actor(seq),
         "action": "identify", "collection": f"c{seq % 5}", "purpose": None,
         "input_hash": None, "summary": "{}", "prev_hash": GENESIS, "hash": GENESIS}
        for seq in range(1, PLANNED_EVENTS + 1)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(AuditRow), rows)
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE audit_event"))
    yield engine
    engine.dispose()


def _plan(engine: Engine, query: Select[Any]) -> str:
    """The database's plan for ``query`` (``EXPLAIN QUERY PLAN`` / ``EXPLAIN``), a line a step."""
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + sql))


WALKS = re.compile(r"\bSCAN audit_event\b|USING INTEGER PRIMARY KEY|Seq Scan on audit_event|"
                   r"using audit_event_pkey")
"""A plan step that reads the log itself in ``seq`` order (or whole), filtering as it goes."""


def _reads_through(plan: str, index: str) -> bool:
    """Whether ``plan`` finds the rows by a range or lookup of ``index`` and walks the log
    nowhere (SQLite: ``SEARCH … USING INDEX``; PostgreSQL: an index or bitmap index scan)."""
    uses = re.search(rf"USING INDEX {index} \(|Index Scan (Backward )?using {index} |"
                     rf"Bitmap Index Scan on {index}\b", plan)  # fmt: skip
    return uses is not None and WALKS.search(plan) is None


MIDDLE = _planned_at(PLANNED_EVENTS // 2)
HOUR = {"since": MIDDLE, "until": MIDDLE + timedelta(hours=1)}
FILTERED_PAGES = {
    "an hour in the middle": ("ix_audit_event_at", HOUR),
    "an hour, paged back": ("ix_audit_event_at", {**HOUR, "before": PLANNED_EVENTS // 2 + 200}),
    "a key's": ("ix_audit_event_actor", {"actor": _planned_actor(10)}),
    "a key's, paged back": ("ix_audit_event_actor",
                            {"actor": _planned_actor(10), "before": PLANNED_EVENTS // 2}),
}  # fmt: skip
"""Newest-first pages (100 events) the audit page and ``visage audit show`` ask for, and the
index each must be read through. Not here: a one-sided window (since, or until, alone), which
SQLite, having no statistics, reads along ``seq`` (the newest events match first: docs/gallery.md
has the figures), and the busy key's events, which PostgreSQL rightly finds by walking back
along ``seq``, 9 in 10 matching."""


def test_time_and_actor_pages_read_their_index_not_the_whole_log(planned: Engine) -> None:
    """Each of :data:`FILTERED_PAGES` is planned as a range of its index (revision 0008); with
    those indexes dropped, the same pages walk the log (the control: what the plan test sees
    when an index is missing)."""
    queries = {page: events_query(newest_first=True, limit=100, **filters)
               for page, (_, filters) in FILTERED_PAGES.items()}  # fmt: skip
    plans = {page: _plan(planned, query) for page, query in queries.items()}
    wrong = {p: plans[p] for p, (index, _) in FILTERED_PAGES.items()
             if not _reads_through(plans[p], index)}  # fmt: skip
    assert not wrong, wrong
    with planned.begin() as conn:
        for index in {index for index, _ in FILTERED_PAGES.values()}:
            conn.execute(text(f"DROP INDEX {index}"))
        if planned.dialect.name == "postgresql":
            conn.execute(text("ANALYZE audit_event"))
    planned.dispose()  # pysqlite caches the EXPLAIN statement: its plan would be the old one
    unindexed = {page: _plan(planned, query) for page, query in queries.items()}
    assert all(WALKS.search(plan) for plan in unindexed.values()), unindexed


def test_a_time_page_across_the_recent_walk_lists_exactly_the_window(planned: Engine) -> None:
    """A newest-first page filtered by time walks the newest :data:`RECENT` events, then reads
    the rest of its window off the index: a window across that edge, paged back with
    ``before``, lists exactly its events, newest first, 100 a page."""
    top = PLANNED_EVENTS
    since, until = _planned_at(top - RECENT - 120), _planned_at(top - RECENT + 50)
    window = [seq for seq in range(top, 0, -1) if since <= _planned_at(seq) < until]
    with Session(planned) as session:
        first = events(session, since=since, until=until, newest_first=True)
        rest = events(session, since=since, until=until, newest_first=True, before=first[-1].seq)
    assert len(first) == 100 and len(window) == 170
    assert [e.seq for e in first + rest] == window
