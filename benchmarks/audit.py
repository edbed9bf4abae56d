"""The audit log's filtered pages on a long log: each filter of ``GET /v1/audit``, newest first.

    .venv/bin/python benchmarks/audit.py [--events 200000] [--db postgresql+psycopg://…/db]

Fills an empty store with ``--events`` audit events (a valid chain: one a minute from 50 keys
over 20 collections, as a busy deployment's log), then times one newest-first page (100
events, :meth:`Gallery.audit_events`, the query ``GET /v1/audit`` and ``visage audit show``
run) for each filter, median of 5 reads, and the whole chain's verification
(``GET /v1/audit/verify``, which the audit page shows). The baseline is the same pages with
revision 0008's indexes dropped (``ix_audit_event_at``, ``ix_audit_event_actor``): the ratio
is the figure. ``--console``: also a real ``visage serve`` on the store and Debian's Chromium
loading the console's audit page: seconds until its Filter button is usable, and until the
chain's verdict shows (until the page showed nothing before it, that was the page's time). On SQLite (a temporary file) unless ``--db`` names an empty database (left
filled, without those indexes: drop it after).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from machine import cpu_line
from sqlalchemy import Engine, create_engine, insert, text, update

from visage.gallery import Gallery
from visage.store.audit import GENESIS, canonical_json, event_hash, stamp
from visage.store.tables import AuditRow, StateRow

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.server.conftest

STEP = timedelta(minutes=1)
INDEXES = ("ix_audit_event_at", "ix_audit_event_actor")
ACTIONS = ("identify",) * 14 + ("person.create", "consent.grant", "enroll", "audit.read")


def fill(engine: Engine, n: int, start: datetime) -> None:
    """``n`` chained events, one per :data:`STEP` from ``start``, and the state row's head."""
    rng = random.Random(15)
    prev = GENESIS
    with engine.begin() as conn:
        for first in range(1, n + 1, 10_000):
            rows: list[dict[str, Any]] = []
            for seq in range(first, min(first + 10_000, n + 1)):
                row = AuditRow(
                    seq=seq, at=stamp(start + seq * STEP), actor=f"vk_{rng.randrange(50):012d}",
                    action=rng.choice(ACTIONS), collection=f"c{rng.randrange(20)}",
                    purpose="door", input_hash=None, summary=canonical_json({"n": seq}),
                    prev_hash=prev,
                )  # fmt: skip
                row.hash = prev = event_hash(row)
                rows.append({c.key: getattr(row, c.key) for c in AuditRow.__table__.columns})
            conn.execute(insert(AuditRow), rows)
        conn.execute(update(StateRow).where(StateRow.id == 1).values(audit_seq=n, audit_head=prev))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE audit_event"))


def pages(n: int, start: datetime) -> dict[str, dict[str, Any]]:
    """The filters timed, by name."""
    end, middle = start + n * STEP, start + n // 2 * STEP
    return {
        "since the last hour": {"since": end - timedelta(hours=1)},
        "since the last 10 minutes": {"since": end - timedelta(minutes=10)},
        "a day in the middle": {"since": middle, "until": middle + timedelta(days=1)},
        "until the first day's end": {"until": start + timedelta(days=1)},
        "until the middle": {"until": middle},
        "since the first event (all)": {"since": start},
        "the whole log as a window": {"since": start, "until": end + timedelta(days=1)},
        "an actor": {"actor": "vk_000000000007"},
        "an actor, paged to the middle": {"actor": "vk_000000000007", "before": n // 2},
        "an actor, a day in the middle": {"actor": "vk_000000000007", "since": middle,
                                          "until": middle + timedelta(days=1)},
        "a collection": {"collection": "c3"},
        "an action": {"action": "person.create"},
    }  # fmt: skip


def timed(g: Gallery, filters: dict[str, Any], reads: int = 5) -> tuple[float, int]:
    """Median milliseconds of a newest-first page of 100, and its length."""
    times, found = [], 0
    for _ in range(reads):
        began = time.perf_counter()
        found = len(g.audit_events(newest_first=True, limit=100, **filters))
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), found


def console_audit_page(db: str, folder: Path) -> tuple[float, float]:
    """Seconds from loading the console's audit page (signed in) until its Filter button is
    usable, and until the chain's verdict shows; a real ``visage serve`` on ``db``."""
    from playwright.sync_api import sync_playwright
    from tests.server.conftest import start_server, stop_server

    server = start_server(folder, store=db)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--no-sandbox"])  # fmt: skip
            page = browser.new_page()
            page.goto(server.url + "/console/")
            page.evaluate("k => sessionStorage.setItem('visage.key', k)", server.admin)
            page.goto("about:blank")
            began = time.monotonic()
            page.goto(server.url + "/console/#/audit")
            page.get_by_role("button", name="Filter", exact=True).wait_for()
            usable = time.monotonic() - began
            page.locator("#chain", has_text="Chain verified").wait_for(timeout=120_000)
            verdict = time.monotonic() - began
            browser.close()
    finally:
        stop_server(server)
    return usable, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--db", help="an empty database URL (default: a temporary SQLite file)")
    parser.add_argument("--console", action="store_true", help="time the console's audit page")
    args = parser.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{Path(tmp) / 'audit.db'}"
        Gallery(db).close()  # opening migrates
        engine = create_engine(db)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        began = time.perf_counter()
        fill(engine, args.events, start)
        print(f"store: {db.split('://')[0]}; {args.events} events written in "
              f"{time.perf_counter() - began:.1f} s")  # fmt: skip
        asked = pages(args.events, start)
        with Gallery(db) as g:
            began = time.perf_counter()
            report = g.verify_audit()
            walk = time.perf_counter() - began
            assert report.ok and report.events == args.events, report.describe()
            print(f"chain verification: {walk:.2f} s ({args.events} events)")
            indexed = {name: timed(g, filters) for name, filters in asked.items()}
            if args.console:
                usable, verdict = console_audit_page(db, Path(tmp) / "server")
                print(f"console audit page: Filter usable after {usable:.2f} s, chain verdict "
                      f"after {verdict:.2f} s")  # fmt: skip
            with engine.begin() as conn:
                for index in INDEXES:
                    conn.execute(text(f"DROP INDEX {index}"))
                if engine.dialect.name == "postgresql":
                    conn.execute(text("ANALYZE audit_event"))
            bare = {name: timed(g, filters) for name, filters in asked.items()}
        engine.dispose()
    print(f"{'page of 100, newest first':34} {'indexed ms':>10} {'baseline ms':>11} {'ratio':>6}")
    for name, (ms, found) in indexed.items():
        base, _ = bare[name]
        print(f"{name + f' ({found})':34} {ms:10.1f} {base:11.1f} {base / ms:6.1f}")


if __name__ == "__main__":
    main()
