"""Replays of issue 18's items 1-3 on SQLite and PostgreSQL: reads that leave the gallery
(exports, edge snapshots) take no writers' lock; a snapshot read before a deletion is never
signed with a newer sequence; the server, not the requester, bounds a snapshot's life."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.gallery.conftest import db_url, gallery  # noqa: F401  (store fixtures)
from tests.gallery.forensics import holders, stored_embeddings
from tests.gallery.synthetic import CALIBRATION, near
from visage.edge.snapshot import verify_snapshot
from visage.gallery import ConsentedTemplates, Gallery
from visage.server.hub import EdgeHub
from visage.store import sqlite_path

from .test_hub import DEVICE, KEY, _people


def test_an_export_paused_halfway_blocks_no_writer_or_search(
    gallery: Gallery,  # noqa: F811
    tmp_path: Path,
) -> None:
    ids, vectors = _people(gallery, 5)
    doomed = stored_embeddings(gallery.url, "person_id = :p", p=ids[4])
    halfway, release = threading.Event(), threading.Event()

    def pause(done: int, total: int) -> None:
        if done == 2:
            halfway.set()
            assert release.wait(60)

    exporter = threading.Thread(
        target=gallery.export_collection, args=("people", tmp_path / "out.jsonl"),
        kwargs={"progress": pause},
    )  # fmt: skip
    other = Gallery(gallery.url, calibrations=[CALIBRATION])  # another connection
    exporter.start()
    try:
        assert halfway.wait(30)
        started = time.monotonic()
        other.delete_person("people", ids[4])
        found = other.identify("people", near(vectors[0], 0.02, 1), purpose="test")
        took = time.monotonic() - started
        assert found.best is not None and found.best.person_id == ids[0]
        assert took < 10, f"writes waited {took:.1f} s for the export"  # the lock waits 30 s
    finally:
        release.set()
        exporter.join()
        other.close()  # the truncation that waited for the export's snapshot is done by now
    # the export is the snapshot it started from, and audited
    assert sum(1 for _ in (tmp_path / "out.jsonl").open()) == 1 + 5
    (event,) = gallery.audit_events(action="collection.export", limit=10)
    assert event.summary["persons"] == 5
    db = sqlite_path(gallery.url)
    if db is not None:  # once the reader is gone, no byte of the deleted template is left
        assert holders(db, doomed) == {}


class _PausedOnce:
    """The gallery, except that the first :meth:`consented_templates` read waits for ``go``
    after reading: a slow hub holding content read before a deletion."""

    def __init__(self, inner: Gallery) -> None:
        self._gallery = inner
        self.read, self.go = threading.Event(), threading.Event()

    def consented_templates(self, *args: Any, **kwargs: Any) -> ConsentedTemplates:
        content = self._gallery.consented_templates(*args, **kwargs)
        if not self.read.is_set():
            self.read.set()
            assert self.go.wait(60)
        return content

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gallery, name)


def test_a_stale_read_is_never_signed_with_a_newer_sequence(
    gallery: Gallery,  # noqa: F811
) -> None:
    ids, _ = _people(gallery, 3)
    paused = _PausedOnce(gallery)
    slow = EdgeHub(paused, KEY)  # type: ignore[arg-type]
    fast = EdgeHub(gallery, KEY)
    docs: list[bytes] = []
    puller = threading.Thread(
        target=lambda: docs.append(slow.snapshot(key_id="vk_a", collection="people", device=DEVICE))
    )
    puller.start()
    try:
        assert paused.read.wait(30)  # the slow hub holds content with ids[0] in it
        gallery.delete_person("people", ids[0])
        served = verify_snapshot(
            fast.snapshot(key_id="vk_a", collection="people", device=DEVICE), KEY.public_key()
        )
    finally:
        paused.go.set()
        puller.join()
    late = verify_snapshot(docs[0], KEY.public_key(), min_sequence=served.sequence)
    assert ids[0] not in {p.id for p in late.persons}, "a deleted person came back in a snapshot"
    assert late.sequence == served.sequence and late.content_sha256() == served.content_sha256()


@pytest.mark.parametrize("asked", [None, 600, 30 * 24 * 3600])
def test_the_server_caps_a_snapshots_life_whatever_is_asked(
    gallery: Gallery,  # noqa: F811
    asked: int | None,
) -> None:
    _people(gallery, 2)
    hub = EdgeHub(gallery, KEY, max_ttl_s=3600)
    doc = hub.snapshot(key_id="vk_a", collection="people", device=DEVICE, ttl_s=asked)
    snap = verify_snapshot(doc, KEY.public_key())
    assert snap.expires_at - snap.issued_at == timedelta(seconds=min(asked or 3600, 3600))
