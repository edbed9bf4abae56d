"""The gallery's rules on synthetic embeddings, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from visage.errors import Conflict, ConsentError, InputError, NotFound
from visage.gallery import EmbeddingItem, Gallery
from visage.store import utcnow

from .forensics import holders, stored_embeddings
from .synthetic import CALIBRATION, MODEL, consented_person, near, unit_vectors


def _store_rows(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    """Read the store directly, bypassing the gallery (what is really in the database)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def test_enrollment_requires_valid_consent(gallery: Gallery) -> None:
    person = gallery.add_person("people", "Ada", external_id="ada")
    vec = unit_vectors(1, seed=1)[0]
    with pytest.raises(ConsentError, match="no consent record"):
        gallery.enroll("people", person.id, vec)
    gallery.grant_consent(
        "people", "ada", basis="consent", granted_by="Ada",
        granted_at=utcnow() - timedelta(days=10), expires_at=utcnow() - timedelta(days=1),
    )
    with pytest.raises(ConsentError, match="expired"):
        gallery.enroll("people", "ada", vec)
    gallery.grant_consent("people", "ada", basis="contract", granted_by="HR")
    result = gallery.enroll("people", "ada", vec)
    assert result.created and result.person_id == person.id
    assert gallery.person("people", "ada").templates == 1


def test_refused_enrollment_is_audited(gallery: Gallery) -> None:
    """Who tried to enroll whom, and why it was refused, is in the log; nothing else is stored."""
    person = gallery.add_person("people", "Bo", external_id="bo")
    with pytest.raises(ConsentError):
        gallery.enroll("people", "bo", unit_vectors(1, seed=9)[0], actor="kiosk-3", purpose="onboarding")
    event = gallery.audit_events(limit=1, newest_first=True)[0]
    assert event.action == "enroll.refused" and event.actor == "kiosk-3"
    assert event.purpose == "onboarding" and event.summary["reason"] == "ConsentError"
    assert event.summary["person"] == "bo" and "no consent record" in event.summary["detail"]
    assert gallery.person("people", person.id).templates == 0
    assert gallery.verify_audit().ok


def test_consent_input_is_validated(gallery: Gallery) -> None:
    consented_person(gallery, "Ada")
    with pytest.raises(InputError, match="unknown consent basis"):
        gallery.grant_consent("people", "ada", basis="because", granted_by="x")
    with pytest.raises(InputError, match="expire after"):
        gallery.grant_consent("people", "ada", basis="consent", granted_by="x",
                              expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(NotFound):
        gallery.grant_consent("people", "nobody", basis="consent", granted_by="x")


def test_identify_ranks_persons_by_best_template_and_says_unknown(gallery: Gallery) -> None:
    vecs = unit_vectors(20, seed=2)
    ids = [consented_person(gallery, f"P{i}") for i in range(20)]
    gallery.enroll_many("people", [EmbeddingItem(p, v) for p, v in zip(ids, vecs)])
    # a second, different template for P5: the probe is near this one, far from the first
    extra = unit_vectors(1, seed=3)[0]
    gallery.enroll("people", ids[5], extra)

    result = gallery.identify("people", near(extra, 0.02, seed=4), k=3)
    assert not result.unknown
    assert result.best is not None and result.best.person_id == ids[5]
    assert result.best.distance < 0.4 and result.best.same
    assert len(result.candidates) == 3
    assert len({c.person_id for c in result.candidates}) == 3  # each person once
    assert [c.distance for c in result.candidates] == sorted(c.distance for c in result.candidates)
    assert result.threshold == CALIBRATION.threshold

    stranger = gallery.identify("people", unit_vectors(1, seed=99)[0], k=3)
    assert stranger.unknown and stranger.best is None
    assert all(not c.same for c in stranger.candidates)


def test_verify_and_find_similar(gallery: Gallery) -> None:
    vecs = unit_vectors(3, seed=5)
    ada, bob = consented_person(gallery, "Ada"), consented_person(gallery, "Bob")
    gallery.enroll("people", ada, vecs[0])
    gallery.enroll("people", ada, vecs[1])
    gallery.enroll("people", bob, vecs[2])
    probe = near(vecs[1], 0.02, seed=6)
    yes = gallery.verify("people", "ada", probe)
    assert yes.same and yes.person_id == ada and yes.distance < 0.4
    no = gallery.verify("people", "bob", probe)
    assert not no.same and no.distance > 1.0
    similar = gallery.find_similar("people", probe, k=2)
    assert similar[0].person_id == ada
    assert len(similar) == 2 and similar[0].distance < similar[1].distance


def test_duplicate_source_is_idempotent(gallery: Gallery) -> None:
    ada = consented_person(gallery, "Ada")
    vec = unit_vectors(1, seed=7)[0]
    first = gallery.enroll("people", ada, vec)
    again = gallery.enroll("people", ada, vec)
    assert first.created and not again.created
    assert again.template_id == first.template_id
    many = gallery.enroll_many("people", [EmbeddingItem(ada, vec, source_sha256="x" * 64)] * 3)
    assert [m.created for m in many] == [True, False, False]
    assert gallery.person("people", ada).templates == 2
    assert gallery.index("people").count() == 2


def test_revoke_removes_templates_from_store_index_and_results(
    gallery: Gallery, db_url: str
) -> None:
    vecs = unit_vectors(3, seed=8)
    ada, bob = consented_person(gallery, "Ada"), consented_person(gallery, "Bob")
    t1 = gallery.enroll("people", ada, vecs[0]).template_id
    t2 = gallery.enroll("people", ada, vecs[1]).template_id
    gallery.enroll("people", bob, vecs[2])
    assert gallery.identify("people", vecs[0]).best is not None
    (stored,) = stored_embeddings(db_url, "id = :t", t=t1)  # the bytes written, not the input's
    by_bytes = "SELECT id FROM template WHERE embedding = :e"
    assert _store_rows(db_url, by_bytes, e=stored) == [(t1,)]

    assert gallery.revoke_consent("people", "ada", reason="asked") == 2
    result = gallery.identify("people", vecs[0], k=5)
    assert result.unknown and ada not in {c.person_id for c in result.candidates}
    assert t1 not in gallery.index("people").ids() and t2 not in gallery.index("people").ids()
    assert _store_rows(db_url, "SELECT id FROM template WHERE person_id = :p", p=ada) == []
    assert _store_rows(db_url, by_bytes, e=stored) == []
    info = gallery.person("people", ada)
    assert not info.consent_valid and info.consents[-1].status == "revoked"
    with pytest.raises(ConsentError, match="revoked"):
        gallery.enroll("people", ada, vecs[0])
    with pytest.raises(ConsentError, match="no open consent"):
        gallery.revoke_consent("people", ada)


def test_delete_person_leaves_nothing_behind(gallery: Gallery, db_url: str, tmp_path: Path) -> None:
    vecs = unit_vectors(2, seed=9)
    ada, bob = consented_person(gallery, "Ada"), consented_person(gallery, "Bob")
    gallery.enroll("people", ada, vecs[0])
    gallery.enroll("people", bob, vecs[1])
    gallery.index("people")  # rebuilt and saved: the snapshot holds Ada's template
    (erased,) = stored_embeddings(db_url, "person_id = :p", p=ada)  # the bytes really written
    saved = [p for p in (tmp_path / "index").iterdir() if p.is_file()]
    assert any(erased in p.read_bytes() for p in saved), "control: the snapshot holds them"
    db_file = tmp_path / "gallery.db"
    if db_url.startswith("sqlite"):
        assert holders(db_file, [erased]), "control: the store's files hold them"
    assert gallery.delete_person("people", "ada", purpose="erasure request") == 1
    assert gallery.identify("people", vecs[0]).unknown
    assert gallery.index("people").count() == 1
    for table in ("person", "consent", "template"):
        column = "id" if table == "person" else "person_id"
        assert _store_rows(db_url, f"SELECT * FROM {table} WHERE {column} = :p", p=ada) == []
    with pytest.raises(NotFound):
        gallery.person("people", ada)
    gallery.save_indexes()
    saved = [p for p in (tmp_path / "index").iterdir() if p.is_file()]
    assert saved and not any(erased in p.read_bytes() for p in saved)
    if db_url.startswith("sqlite"):  # gone from .db, -wal and -shm while the store is open
        assert holders(db_file, [erased]) == {}
    event = gallery.audit_events(action="person.delete")[0]
    assert event.purpose == "erasure request" and event.actor == "tester"
    assert event.summary["person"] == ada and event.summary["templates_removed"] == 1


CONSENT_WINDOW_S = 6.0
"""Long enough for the setup before the control (1.8 s seen on PostgreSQL on 2 busy cores)."""


def test_expired_consent_hides_person_from_every_search(gallery: Gallery) -> None:
    vecs = unit_vectors(2, seed=10)
    ada = gallery.add_person("people", "Ada").id
    expires = utcnow() + timedelta(seconds=CONSENT_WINDOW_S)
    gallery.grant_consent("people", ada, basis="consent", granted_by="Ada", expires_at=expires)
    bob = consented_person(gallery, "Bob")
    gallery.enroll("people", ada, vecs[0])
    gallery.enroll("people", bob, vecs[1])
    assert gallery.identify("people", vecs[0]).best.person_id == ada  # type: ignore[union-attr]
    assert utcnow() < expires, f"setup took over {CONSENT_WINDOW_S} s: the control is void"
    time.sleep((expires - utcnow()).total_seconds() + 0.1)  # until just past the expiry
    result = gallery.identify("people", vecs[0], k=5)
    assert result.unknown and [c.person_id for c in result.candidates] == [bob]
    assert [s.person_id for s in gallery.find_similar("people", vecs[0], k=5)] == [bob]
    with pytest.raises(ConsentError, match="expired"):
        gallery.verify("people", ada, vecs[0])


def test_search_asks_the_index_for_more_when_its_first_candidates_are_filtered_out(
    gallery: Gallery,
) -> None:
    """The index's first ``max(4k, 32)`` candidates are all Ada's 40 templates: once collapsed
    to one per person, or dropped when her consent has expired, fewer than ``k`` persons are
    left, so the search asks again for 4x more and finds Bob, whose one template is farther."""
    probe = unit_vectors(1, seed=21)[0]
    ada = gallery.add_person("people", "Ada").id
    expires = utcnow() + timedelta(seconds=CONSENT_WINDOW_S)
    gallery.grant_consent("people", ada, basis="consent", granted_by="Ada", expires_at=expires)
    bob, cy = consented_person(gallery, "Bob"), consented_person(gallery, "Cy")
    nearer = [near(probe, 0.01, seed=100 + i) for i in range(40)]
    gallery.enroll_many("people", [EmbeddingItem(ada, v) for v in nearer])
    gallery.enroll("people", bob, near(probe, 0.03, seed=7))
    gallery.enroll("people", cy, unit_vectors(1, seed=22)[0])
    bob_distance = float(np.linalg.norm(near(probe, 0.03, seed=7) - probe))
    assert bob_distance > max(float(np.linalg.norm(v - probe)) for v in nearer)  # the control
    both = gallery.identify("people", probe, k=2)
    assert [c.person_id for c in both.candidates] == [ada, bob]
    assert utcnow() < expires, f"setup took over {CONSENT_WINDOW_S} s: the control is void"
    time.sleep((expires - utcnow()).total_seconds() + 0.1)  # until just past Ada's expiry
    after = gallery.identify("people", probe, k=1)
    assert after.best is not None and after.best.person_id == bob


def test_every_action_is_audited_and_probes_are_not_stored(gallery: Gallery, db_url: str) -> None:
    vecs = unit_vectors(2, seed=11)
    ada = consented_person(gallery, "Ada")
    gallery.enroll("people", ada, vecs[0], purpose="onboarding", actor="clerk-7")
    probe = near(vecs[0], 0.02, seed=12)
    gallery.identify("people", probe, purpose="door", actor="door-1")
    gallery.verify("people", ada, probe, purpose="login")
    gallery.find_similar("people", probe, k=1)
    actions = [e.action for e in gallery.audit_events(limit=100)]
    assert actions == [
        "collection.create", "person.create", "consent.grant", "enroll", "identify", "verify",
        "find_similar",
    ]
    enroll, identify = gallery.audit_events(action="enroll")[0], gallery.audit_events(action="identify")[0]
    assert enroll.actor == "clerk-7" and enroll.purpose == "onboarding"
    assert identify.actor == "door-1" and identify.purpose == "door"
    assert identify.input_hash is not None and len(identify.input_hash) == 64
    assert identify.summary["candidates"][0]["person"] == ada
    assert identify.summary["unknown"] is False
    probe_bytes = probe.astype("<f4").tobytes()
    for table, column in (("template", "embedding"), ("template", "image")):
        assert _store_rows(db_url, f"SELECT 1 FROM {table} WHERE {column} = :b", b=probe_bytes) == []
    assert gallery.verify_audit().ok


def test_bad_input_gives_typed_errors(gallery: Gallery) -> None:
    ada = consented_person(gallery, "Ada")
    with pytest.raises(InputError, match="shape"):
        gallery.enroll("people", ada, np.ones(64, np.float32))
    with pytest.raises(InputError, match="finite"):
        gallery.identify("people", np.full(128, np.nan, np.float32))
    with pytest.raises(InputError, match="k must"):
        gallery.identify("people", unit_vectors(1, seed=1)[0], k=0)
    with pytest.raises(NotFound, match="no collection"):
        gallery.identify("nowhere", unit_vectors(1, seed=1)[0])
    with pytest.raises(NotFound, match="no enrolled template"):
        gallery.verify("people", ada, unit_vectors(1, seed=1)[0])
    with pytest.raises(Conflict, match="already exists"):
        gallery.create_collection("people", model_id="other")
    with pytest.raises(Conflict, match="taken"):
        gallery.add_person("people", "Ada again", external_id="ada")
    with pytest.raises(ValueError, match="unknown index"):
        Gallery(gallery.url, index="annoy")


def test_collections_are_isolated(gallery: Gallery) -> None:
    gallery.create_collection("other", model_id=MODEL)
    vec = unit_vectors(1, seed=13)[0]
    ada = consented_person(gallery, "Ada")
    gallery.enroll("people", ada, vec)
    assert gallery.identify("other", vec).candidates == ()
    with pytest.raises(NotFound):
        gallery.enroll("other", ada, vec)
    assert [c.name for c in gallery.collections()] == ["other", "people"]
    assert gallery.collection("people").templates == 1


def test_export_import_round_trip(gallery: Gallery, tmp_path: Path) -> None:
    vecs = unit_vectors(4, seed=14)
    ids = [consented_person(gallery, f"P{i}") for i in range(3)]
    gallery.enroll_many("people", [EmbeddingItem(ids[i % 3], v) for i, v in enumerate(vecs)])
    gallery.revoke_consent("people", ids[2])
    summary = gallery.export_collection("people", tmp_path / "people.jsonl", purpose="backup")
    assert (summary.persons, summary.templates) == (3, 3)
    assert gallery.audit_events(limit=1, newest_first=True)[0].summary["sha256"] == summary.sha256

    with Gallery(f"sqlite:///{tmp_path / 'copy.db'}", calibrations=[CALIBRATION]) as copy:
        imported = copy.import_collection(tmp_path / "people.jsonl", name="restored")
        assert (imported.persons, imported.templates, imported.renamed_from) == (3, 3, "people")
        assert copy.identify("restored", vecs[3]).best.person_id == ids[0]  # type: ignore[union-attr]
        assert copy.person("restored", ids[2]).consents[-1].status == "revoked"
        with pytest.raises(Conflict):
            copy.import_collection(tmp_path / "people.jsonl", name="restored")
        twin = copy.import_collection(tmp_path / "people.jsonl", name="twin")
        assert twin.rekeyed == 3 and copy.collection("twin").templates == 3
        assert copy.identify("twin", vecs[3]).best.person_id != ids[0]  # type: ignore[union-attr]
        (tmp_path / "bad.jsonl").write_text('{"format": "something-else"}\n')
        with pytest.raises(InputError, match="not a Visage collection export"):
            copy.import_collection(tmp_path / "bad.jsonl")


def test_other_process_writes_are_seen_before_search(db_url: str, tmp_path: Path) -> None:
    """Two Gallery objects on one store: each search first brings its index up to date."""
    vecs = unit_vectors(2, seed=15)
    kwargs = {"index_dir": tmp_path / "index", "calibrations": [CALIBRATION]}
    with Gallery(db_url, **kwargs) as a, Gallery(db_url, **kwargs) as b:  # type: ignore[arg-type]
        a.create_collection("people", model_id=MODEL)
        ada = consented_person(a, "Ada")
        a.enroll("people", ada, vecs[0])
        assert b.identify("people", vecs[0]).best.person_id == ada  # type: ignore[union-attr]
        bob = consented_person(a, "Bob")
        a.enroll("people", bob, vecs[1])
        a.delete_person("people", ada)
        assert b.identify("people", vecs[0]).unknown
        assert b.identify("people", vecs[1]).best.person_id == bob  # type: ignore[union-attr]


def test_index_snapshot_is_reused_or_rebuilt(db_url: str, tmp_path: Path) -> None:
    vecs = unit_vectors(30, seed=16)
    kwargs = {"index_dir": tmp_path / "index", "calibrations": [CALIBRATION]}
    with Gallery(db_url, **kwargs) as g:  # type: ignore[arg-type]
        g.create_collection("people", model_id=MODEL)
        ids = [consented_person(g, f"P{i}") for i in range(30)]
        g.enroll_many("people", [EmbeddingItem(p, v) for p, v in zip(ids, vecs)])
        g.index("people")
    meta = next((tmp_path / "index").glob("collection-*.json"))
    saved = meta.read_text()
    with Gallery(db_url, **kwargs) as g:  # type: ignore[arg-type]
        assert g.index("people").count() == 30
        assert meta.read_text() == saved  # loaded as saved, not rebuilt
        g.delete_person("people", ids[0])
    assert meta.read_text() != saved  # close() saved the new version
    # a stale snapshot (the store moved on without it) is rebuilt, not trusted
    stale = meta.read_text()
    with Gallery(db_url, index_dir=tmp_path / "other", calibrations=[CALIBRATION]) as g:
        g.delete_person("people", ids[1])
    with Gallery(db_url, **kwargs) as g:  # type: ignore[arg-type]
        index = g.index("people")
        assert index.count() == 28
        assert set(index.ids().tolist()).isdisjoint({1, 2})
    assert meta.read_text() != stale


def test_faiss_index_behind_the_gallery(db_url: str, tmp_path: Path) -> None:
    vecs = unit_vectors(300, seed=17)
    with Gallery(db_url, index="faiss:HNSW16,Flat;efSearch=64", index_dir=tmp_path / "index",
                 calibrations=[CALIBRATION]) as g:
        g.create_collection("people", model_id=MODEL)
        ids = [consented_person(g, f"P{i}") for i in range(30)]
        g.enroll_many("people", [EmbeddingItem(ids[i % 30], v) for i, v in enumerate(vecs)])
        assert g.index("people").spec == "faiss:HNSW16,Flat;efSearch=64"
        g.delete_person("people", ids[4])
        for i in (4, 5, 34):
            best = g.identify("people", vecs[i]).best
            assert (best is None) if i % 30 == 4 else (best is not None and best.person_id == ids[i % 30])


def test_template_listing_deletion_person_update_and_collection_deletion(
    gallery: Gallery, db_url: str
) -> None:
    vecs = unit_vectors(3, seed=18)
    ada = consented_person(gallery, "Ada")
    first, second = (gallery.enroll("people", ada, v).template_id for v in vecs[:2])
    assert [t.id for t in gallery.templates("people", ada)] == [first, second]
    gallery.delete_template("people", ada, first, purpose="bad photo")
    assert [t.id for t in gallery.templates("people", ada)] == [second]
    assert first not in gallery.index("people").ids()
    assert gallery.identify("people", vecs[0]).unknown
    with pytest.raises(NotFound):
        gallery.delete_template("people", ada, first)

    renamed = gallery.update_person("people", ada, display_name="Ada L.", external_id="E-1")
    assert (renamed.display_name, renamed.external_id) == ("Ada L.", "E-1")
    bob = consented_person(gallery, "Bob")
    with pytest.raises(Conflict):
        gallery.update_person("people", bob, external_id="E-1")

    assert gallery.delete_collection("people") == 1
    with pytest.raises(NotFound):
        gallery.collection("people")
    assert _store_rows(db_url, "SELECT count(*) FROM template")[0][0] == 0
    assert _store_rows(db_url, "SELECT count(*) FROM person")[0][0] == 0
    actions = [e.action for e in gallery.audit_events(limit=100)]
    assert {"template.delete", "person.update", "collection.delete"} <= set(actions)
    assert gallery.verify_audit().ok
