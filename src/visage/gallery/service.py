"""The gallery service: the one place the rules live. The HTTP server, CLI and edge agent call it.

Rules, in one place:

- **Consent first.** A person is enrolled only while a consent record is valid (granted, not
  yet expired, not revoked). Revoking consent or deleting a person removes every template
  from the store and the index, and every edge event (with its crop) recorded for them, in one
  operation; deleting a collection also removes its edge devices and snapshot records. Persons whose consent expired are skipped by
  every search (their templates stay until deleted or revoked).
- **Quality gate.** A face whose quality has reasons is refused with those reasons. A photo
  with several faces is refused unless the caller picks one (``face=0`` is the largest,
  ``face="center"`` the one nearest the image centre). Enrolling the same source (sha256 of the
  photo, or of the embedding) for the same person again returns the existing template.
- **One distance, calibrated.** Every score is :func:`visage.decision.distances` on
  L2-normalised embeddings, and every 1:1 decision :func:`visage.decision.decide` with the
  calibration recorded for the collection's model — never a constant here.
- **Best template per person.** A person is scored by the distance to their nearest template.
  It rewards enrolling varied photos; each extra template also adds a chance of a false match,
  which identify's threshold accounts for (it is derived for the number of templates).
- **Open set at the gallery's size.** identify returns the top-k persons and ``unknown`` unless
  the nearest clears the bar derived from the collection's target FPIR (default 1%) at its
  current number of templates (:func:`visage.decision.identify_point`: a margin over the
  second-nearest person, within the sizes calibrated), so a stranger is named as someone at
  about that rate however large the collection grows; every answer states that operating point
  and its own distance bar. verify keeps the per-comparison calibration.
- **Disclosure.** A candidate list names people (id, display name, external id, template) only
  to a caller who may list persons anyway (``disclose="all"``). Any other caller
  (``disclose="matches"``) sees only the candidates within the calibrated threshold: a search
  for a stranger reveals nobody, however large ``k``. The audit event keeps the full ranking.
- **Accountability.** enroll, verify, identify, find-similar, deletions, consent changes,
  import and export each write an audit event (actor, purpose, input hash, result summary) in
  the same transaction as the change. Probes are never stored, only their hash. A refused
  biometric call (no consent, no face, several or too many faces, poor quality) writes an
  ``<action>.refused`` event too: who, what, for whom and why, never the probe.
- **Reads of personal data are accountable too.** A read made for a ``reader`` (the server
  passes the caller's key) — a person list, a person, their consents or faces, the audit log —
  writes ``person.list``, ``person.read`` or ``audit.read`` (ids and counts, never names),
  group-committed like a search's event and durable before the data is returned; a read that
  cannot be audited returns nothing. Reads without a reader are the gallery's own lookups.

Crash safety: the store is the source of truth. The in-memory index of a collection is updated
only after the store's transaction commits, and is known to match the store at the collection's
``version`` (bumped by every transaction that adds or removes templates, under the writers'
lock). Before each search the version is read in the searching transaction; a mismatch (another
process wrote, or a crash left a stale snapshot) reloads the saved snapshot or rebuilds from the
store. Snapshots are written beside the database with their version and count (temp file, fsync,
rename), so a crash at any point leaves either the old snapshot or the new one. They are written
only under the writers' lock and for the version the store holds, and a deletion removes them
before it commits, so no snapshot ever holds a deleted template; after an erasure commits,
SQLite's write-ahead log is truncated (it holds earlier images of the erased rows' pages).
Every file the store writes is owner-only (0600, folders 0700).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self, TypeAlias, TypeVar, cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    CursorResult,
    Row,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from ..decision import (
    FPIR_RANGE,
    Calibration,
    OpenSetCalibration,
    OpenSetPoint,
    decide,
    default_calibration,
    default_open_set,
    distances,
    identify_point,
    unit_embedding,
)
from ..errors import (
    AmbiguousFace,
    Conflict,
    ConsentError,
    InputError,
    InvalidImage,
    NoFace,
    NotFound,
    TooManyFaces,
    VisageError,
)
from ..imageio import Source, decode, media_type, read_bytes, source_hash
from ..models.base import EMBEDDING_DIMS, embedding_dim, model_family
from ..pipeline import Face, FacePick, ImageResult, Pipeline, pick_face
from ..signing import load_signing_key, parse_public_key, public_key_text
from ..store import (
    ChainHead,
    CollectionRow,
    ConsentRow,
    EdgeDeviceRow,
    EdgeEventRow,
    EdgeSnapshotRow,
    JournalEraser,
    PersonRow,
    Store,
    TemplateRow,
    anchor,
    audit,
    collection_named,
    database_url,
    default_url,
    private_temporary,
    sqlite_path,
    utcnow,
)
from . import export_format
from .index import IndexSpec, VectorIndex
from .index_cache import IndexCache
from .records import (
    Candidate,
    CollectionInfo,
    ConsentBasis,
    ConsentedPerson,
    ConsentedTemplates,
    ConsentInfo,
    EmbeddingItem,
    EnrollResult,
    Identification,
    KeptImage,
    PersonInfo,
    SimilarFace,
    TemplateInfo,
    TransferSummary,
    Verification,
    collection_name,
    person_text,
)

log = logging.getLogger(__name__)

IMPORT_BATCH = 500
"""Persons an import writes a transaction: bounds its memory and how long another writer (an
identify's audit event) waits on it, about 0.1 s (docs/performance-service.md)."""

STAGING = "~import-"
"""Name prefix of a collection while it is imported: no valid name starts with ``~``, so no
lookup, listing or search reaches it before the import's last transaction renames it."""

STAGING_STALE_S = 600
"""A staged collection with no batch for this long was left by a crashed import: the next
import erases it."""

Probe: TypeAlias = Face | ImageResult | npt.NDArray[np.float32] | Source
"""What decisions accept: a :class:`Face` with its embedding, a photo already embedded elsewhere
(an :class:`ImageResult`, e.g. from a Ray cluster), an embedding, or a photo."""
Disclosure = Literal["all", "matches"]
"""Which candidates a search names: ``all`` of the top k, or only ``matches`` (within threshold)."""
Progress = Callable[[int, int], None]
_T = TypeVar("_T")


class PoorQuality(InputError):
    """The face failed the enrollment quality gate; ``reasons`` says why."""

    def __init__(self, reasons: Sequence[str], *, source: str | None = None) -> None:
        self.reasons = tuple(reasons)
        where = f"{source}: " if source else ""
        super().__init__(f"{where}face refused by the quality gate: {'; '.join(self.reasons)}")


_IN_MEMORY = (Face, ImageResult, np.ndarray)
"""Probes resolved without embedding a photo (no decode, no detection)."""

_REFUSALS = (ConsentError, PoorQuality, NoFace, AmbiguousFace, TooManyFaces)
"""The refusals of a biometric call that are audited (:meth:`Gallery.record_refusal`)."""


@dataclass(frozen=True)
class _Vector:
    """A probe or template vector resolved from whatever the caller gave."""

    vector: npt.NDArray[np.float32]
    sha256: str
    model_id: str
    quality: float | None = None
    image: bytes | None = None


class _Ranked(NamedTuple):
    """A search's candidate template: whose it is, how far, and how the answer names them."""

    template_id: int
    person_id: str
    distance: float
    display_name: str
    external_id: str | None


def _nearest(
    vec: npt.NDArray[np.float32],
    rows: Sequence[Row[int, str, bytes, str, str | None]],
    k: int,
    *,
    per_person: bool,
) -> list[_Ranked]:
    """The ``k`` nearest of the candidate ``rows`` (the columns of ``_CANDIDATES``) by the one
    distance primitive, ties by template id; with ``per_person`` each person once, at their
    best template. Only the ``k`` kept become records (building one per candidate was a fifth
    of a search's CPU)."""
    if not rows:
        return []
    matrix = np.frombuffer(b"".join(r[2] for r in rows), "<f4").reshape(len(rows), -1)
    dist = distances(vec, matrix)
    order = np.lexsort((np.fromiter((r[0] for r in rows), np.int64, len(rows)), dist))
    kept: list[_Ranked] = []
    seen: set[str] = set()
    for i in order.tolist():
        r = rows[i]
        if per_person:
            if r[1] in seen:
                continue
            seen.add(r[1])
        kept.append(_Ranked(r[0], r[1], float(dist[i]), r[3], r[4]))
        if len(kept) == k:
            break
    return kept


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _vector_bytes(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _person_pages(
    session: Session, coll_id: int, page: int = 1000
) -> Iterator[tuple[PersonRow, list[ConsentRow], list[TemplateRow]]]:
    """A collection's persons in id order, each with their consent records and templates (oldest
    first): one query each per ``page`` persons, memory bounded by the page."""
    after = ""
    while True:
        rows = session.scalars(
            select(PersonRow)
            .where(PersonRow.collection_id == coll_id, PersonRow.id > after)
            .order_by(PersonRow.id)
            .limit(page)
        ).all()
        if not rows:
            return
        ids = [r.id for r in rows]
        consents: dict[str, list[ConsentRow]] = {i: [] for i in ids}
        templates: dict[str, list[TemplateRow]] = {i: [] for i in ids}
        for c in session.scalars(
            select(ConsentRow).where(ConsentRow.person_id.in_(ids)).order_by(ConsentRow.id)
        ):
            consents[c.person_id].append(c)
        for t in session.scalars(
            select(TemplateRow).where(TemplateRow.person_id.in_(ids)).order_by(TemplateRow.id)
        ):
            templates[t.person_id].append(t)
        for row in rows:
            yield row, consents[row.id], templates[row.id]
        session.expunge_all()
        after = ids[-1]


def _chunks(items: Sequence[_T], size: int = 5000) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _utc(label: str, value: datetime) -> datetime:
    """``value`` in UTC; :class:`InputError` when naive or beyond what a UTC time can hold
    (``9999-12-31T23:59:59-23:59`` is past year 9999 in UTC)."""
    if value.tzinfo is None:
        raise InputError(f"{label} must be timezone-aware")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InputError(
            f"{label} {value.isoformat()} is out of range (years 1 to 9999 UTC)"
        ) from None


def _consent_fields(
    basis: str | ConsentBasis,
    granted_by: str,
    granted_at: datetime | None,
    expires_at: datetime | None,
) -> tuple[str, datetime, datetime | None]:
    """A consent record's basis, start and end, checked: a known basis, a grantor, aware UTC
    times within range, and an expiry after the grant. Used by grant and by import."""
    basis_value = ConsentBasis.parse(basis).value
    if not isinstance(granted_by, str) or not granted_by:
        raise InputError("consent needs granted_by (who gave or recorded it)")
    start = _utc("granted_at", granted_at or utcnow())
    end = _utc("expires_at", expires_at) if expires_at is not None else None
    if end is not None and end <= start:
        raise InputError("consent must expire after it is granted")
    return basis_value, start, end


def _check_quality(quality: float | None) -> float | None:
    """A template's quality: absent, or a number from 0 to 1."""
    if quality is None:
        return None
    if (
        isinstance(quality, bool)
        or not isinstance(quality, (int, float))
        or not (math.isfinite(quality) and 0 <= quality <= 1)
    ):
        raise InputError(f"quality must be a number from 0 to 1, not {quality!r}")
    return float(quality)


def _own_open_set(text: str) -> OpenSetCalibration:
    """A collection's stored open-set calibration (:meth:`Gallery.calibrate_collection`)."""
    return OpenSetCalibration.from_dict(json.loads(text))


def _disclosed(disclose: Disclosure, same: bool) -> bool:
    """Whether a candidate may be named to the caller: the one disclosure rule."""
    return disclose == "all" or same


def _consent_valid(
    person_id: InstrumentedAttribute[str], now: datetime | BindParameter[datetime]
) -> ColumnElement[bool]:
    """SQL: the person has a consent record that is valid at ``now``."""
    return exists().where(
        ConsentRow.person_id == person_id,
        ConsentRow.revoked_at.is_(None),
        ConsentRow.granted_at <= now,
        or_(ConsentRow.expires_at.is_(None), ConsentRow.expires_at > now),
    )


# Every search runs it. Built once, its compiled form and cache key are reused: building the
# select per call cost about as much as running it (0.55 against 0.32 ms for the candidates of
# one 100k-template search).
_CANDIDATES = (
    select(
        TemplateRow.id,
        TemplateRow.person_id,
        TemplateRow.embedding,
        PersonRow.display_name,
        PersonRow.external_id,
    )
    .join(PersonRow, PersonRow.id == TemplateRow.person_id)
    .where(
        TemplateRow.id.in_(bindparam("ids", expanding=True)),
        TemplateRow.collection_id == bindparam("collection"),
        _consent_valid(TemplateRow.person_id, bindparam("now")),
    )
)


def _consent_status(row: ConsentRow, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.granted_at > now:
        return "pending"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "valid"


def _consent_info(row: ConsentRow, now: datetime) -> ConsentInfo:
    return ConsentInfo(
        id=row.id,
        basis=row.basis,
        purpose=row.purpose,
        granted_by=row.granted_by,
        granted_at=row.granted_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        revoke_reason=row.revoke_reason,
        status=_consent_status(row, now),
    )


class Gallery:
    """Collections of persons with consent, templates, 1:1 and 1:N decisions, and an audit log.

    ``url``: a SQLAlchemy URL or a SQLite file path (default ``$VISAGE_DB`` or
    ``~/.local/share/visage/visage.db``). ``index``: ``auto`` (exact, then IVF with more
    lists as the collection grows: :func:`~visage.gallery.index_cache.auto_spec`), ``exact``,
    ``faiss:<factory>[;<knobs>]`` or ``milvus:<uri>`` (one index shared by every server naming
    that Milvus, see :mod:`visage.gallery.milvus`). ``index_dir``: where index snapshots are saved (default: a
    ``.index`` folder beside a SQLite file; none for other URLs, so indexes are rebuilt from the
    store when first used). ``pipeline``: used for photo input (the shared default pipeline when
    omitted). ``calibrations``: thresholds per model id, overriding the shipped ones.
    ``actor``: recorded in audit events unless a call names another. ``anchors``: the file
    that signed checkpoints of the audit chain's head go to (default: see
    :func:`visage.store.anchor.anchor_file`). ``create``: false to refuse (:class:`NotFound`)
    a SQLite store that does not exist yet rather than create it.

    Safe to share between threads (operations are serialised by a lock); several processes may
    open the same store (writers are serialised by the store).
    """

    def __init__(
        self,
        url: str | Path | None = None,
        *,
        index: str = "auto",
        index_dir: str | Path | None = None,
        pipeline: Pipeline | None = None,
        calibrations: Iterable[Calibration] = (),
        actor: str = "local",
        anchors: str | Path | None = None,
        create: bool = True,
    ) -> None:
        if index != "auto":
            IndexSpec.parse(index)
        self.url = database_url(url) if url is not None else default_url()
        self.actor = actor
        db_file = sqlite_path(self.url)
        if index_dir is not None:
            folder: Path | None = Path(index_dir)
        elif db_file is not None:
            folder = db_file.with_name(db_file.name + ".index")
        else:
            folder = None
        self._pipeline = pipeline
        self._calibrations = {c.model_id: c for c in calibrations}
        self.anchors = anchor.anchor_file(db_file, anchors)
        self.store = Store.open(self.url, anchors=anchors, create=create)
        """The process's one handle on the store, shared with the server's key store, event
        log and edge hub."""
        self._indexes = IndexCache(index, folder, self.store)
        self._journal = JournalEraser(self.store.engine)
        # One in-memory SQLite connection is shared: its reads cannot overlap a write.
        self._shared_connection = db_file is None and self.store.engine.dialect.name == "sqlite"
        self._searches = audit.GroupCommit(self._transaction)
        self._points: dict[int, tuple[tuple[int, float, str | None], OpenSetPoint]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Save index snapshots that changed, finish a write-ahead log truncation still waiting
        for readers, and release the database connections."""
        with self._lock:
            self.save_indexes()
            try:
                self._journal.close()
            finally:
                self.store.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[tuple[Session, ChainHead]]:
        """:func:`audit.write`, a store's conflict as :class:`Conflict`."""
        try:
            with self.store.write("gallery store") as w:
                yield w.session, w.state
        except IntegrityError as exc:
            log.warning("the gallery store refused a write: %s", exc)
            raise Conflict("the store refused a conflicting write") from exc

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        """A read-only transaction on one consistent snapshot, without the writers' lock."""
        with self._read_guard(), self.store.read("gallery store") as session:
            yield session

    @contextmanager
    def _searching(self) -> Iterator[Session]:
        """:meth:`_reading` for a search; afterwards an index it had to rebuild is saved as a
        snapshot file (once, under the writers' lock, only if it still matches the store)."""
        with self._reading() as session:
            yield session
        if self._indexes.rebuilt:
            self.save_indexes()

    @contextmanager
    def _probe_search(
        self, collection: str, probe: Probe, face: FacePick
    ) -> Iterator[tuple[Session, CollectionRow, _Vector]]:
        """:meth:`_searching`, the collection's row in it and the probe's vector. A photo is
        embedded before the snapshot opens (that takes far longer than a query); an embedding
        or a :class:`Face` is checked against the snapshot's own row: one transaction where
        there were two."""
        early = None if isinstance(probe, _IN_MEMORY) else self._resolve(collection, probe, face)
        with self._searching() as session:
            coll = self._collection(session, collection)
            yield session, coll, (early or self._resolve_for(coll, probe, face))[0]

    @contextmanager
    def _read_guard(self) -> Iterator[None]:
        if self._shared_connection:
            with self._lock:
                yield
        else:
            yield

    def _audit_search(
        self,
        action: str,
        *,
        actor: str | None,
        collection: str,
        purpose: str | None,
        input_hash: str,
        **summary: Any,
    ) -> int:
        """The audit event of a search, group-committed with concurrent searches' events
        (:class:`~visage.store.audit.GroupCommit`); returns once it is durable."""
        return self._searches.append(
            actor=actor or self.actor, action=action, collection=collection, purpose=purpose,
            input_hash=input_hash, summary=summary,
        )  # fmt: skip

    def _audit_read(
        self,
        action: str,
        *,
        reader: str | None,
        collection: str | None,
        purpose: str | None,
        **summary: Any,
    ) -> None:
        """The audit event of a read of personal data made for ``reader`` (none: not audited),
        group-committed with searches' events; returns once it is durable."""
        if reader is not None:
            self._searches.append(
                actor=reader, action=action, collection=collection, purpose=purpose,
                input_hash=None, summary=summary,
            )  # fmt: skip

    def _audit(
        self,
        session: Session,
        state: ChainHead,
        action: str,
        *,
        actor: str | None,
        collection: str | None,
        purpose: str | None = None,
        input_hash: str | None = None,
        **summary: Any,
    ) -> int:
        return audit.append(
            session,
            state,
            actor=actor or self.actor,
            action=action,
            collection=collection,
            purpose=purpose,
            input_hash=input_hash,
            summary=summary,
        )

    def calibration(self, model_id: str) -> Calibration:
        """The calibration decisions use for ``model_id`` (given at construction, else shipped)."""
        if model_id in self._calibrations:
            return self._calibrations[model_id]
        return default_calibration(model_id)

    def _get_pipeline(self) -> Pipeline:
        if self._pipeline is None:
            from ..api import pipeline

            self._pipeline = pipeline()
        return self._pipeline

    # ------------------------------------------------------------------ lookups

    _collection = staticmethod(collection_named)

    @staticmethod
    def _person(session: Session, coll: CollectionRow, ref: str) -> PersonRow:
        """A person of ``coll`` by id, or else by external id."""
        row = session.scalar(
            select(PersonRow).where(PersonRow.collection_id == coll.id, PersonRow.id == ref)
        ) or session.scalar(
            select(PersonRow).where(
                PersonRow.collection_id == coll.id, PersonRow.external_id == ref
            )
        )
        if row is None:
            raise NotFound(f"no person {ref!r} in collection {coll.name!r}")
        return row

    @staticmethod
    def _collection_info(session: Session, row: CollectionRow) -> CollectionInfo:
        persons = session.scalar(
            select(func.count()).select_from(PersonRow).where(PersonRow.collection_id == row.id)
        )
        templates = session.scalar(
            select(func.count()).select_from(TemplateRow).where(TemplateRow.collection_id == row.id)
        )
        return CollectionInfo(
            name=row.name,
            model_id=row.model_id,
            dim=row.dim,
            keep_images=row.keep_images,
            created_at=row.created_at,
            persons=int(persons or 0),
            templates=int(templates or 0),
            target_fpir=row.target_fpir,
            open_set_source=(
                None if row.open_set is None else str(json.loads(row.open_set)["source"])
            ),
        )

    @staticmethod
    def _person_info(session: Session, coll: CollectionRow, row: PersonRow) -> PersonInfo:
        now = utcnow()
        consents = session.scalars(
            select(ConsentRow).where(ConsentRow.person_id == row.id).order_by(ConsentRow.id)
        ).all()
        templates = session.scalar(
            select(func.count()).select_from(TemplateRow).where(TemplateRow.person_id == row.id)
        )
        return PersonInfo(
            id=row.id,
            collection=coll.name,
            display_name=row.display_name,
            external_id=row.external_id,
            metadata=dict(row.meta),
            created_at=row.created_at,
            templates=int(templates or 0),
            consents=tuple(_consent_info(c, now) for c in consents),
        )

    @staticmethod
    def _require_consent(session: Session, person: PersonRow, now: datetime) -> None:
        """Raise :class:`ConsentError` saying why ``person`` has no valid consent at ``now``."""
        rows = session.scalars(
            select(ConsentRow).where(ConsentRow.person_id == person.id).order_by(ConsentRow.id)
        ).all()
        _refuse_without_consent(person, rows, now)

    # ------------------------------------------------------------------ collections

    def create_collection(
        self,
        name: str,
        *,
        model_id: str | None = None,
        dim: int = 128,
        keep_images: bool = False,
        target_fpir: float = 0.01,
        exist_ok: bool = False,
        actor: str | None = None,
    ) -> CollectionInfo:
        """Create an isolated collection for embeddings of ``model_id`` (default: the pipeline's).

        ``dim`` is the embedding size (128 for ``dlib_resnet_v1``). ``keep_images`` stores the
        source photo with each template (off by default: only the embedding and its hash).
        ``target_fpir``: the share of strangers identify may name as someone (1e-6 to 0.5).
        Raises :class:`Conflict` when it exists (unless ``exist_ok``).
        """
        collection_name(name)
        low, high = FPIR_RANGE
        if not (isinstance(target_fpir, (int, float)) and low <= target_fpir <= high):
            raise InputError(f"target_fpir must be between {low:g} and {high:g}")
        model = model_id if model_id is not None else self._get_pipeline().model_id
        with self._lock, self._transaction() as (session, state):
            existing = session.scalar(select(CollectionRow).where(CollectionRow.name == name))
            if existing is not None:
                if exist_ok and existing.model_id == model and existing.dim == dim:
                    return self._collection_info(session, existing)
                raise Conflict(
                    f"collection {name!r} already exists (model {existing.model_id}, "
                    f"dim {existing.dim})"
                )
            row = CollectionRow(
                name=name,
                model_id=model,
                dim=dim,
                keep_images=keep_images,
                target_fpir=float(target_fpir),
                version=state.audit_seq,  # see CollectionRow.version: never an old id's version
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            self._audit(
                session,
                state,
                "collection.create",
                actor=actor,
                collection=name,
                model_id=model,
                dim=dim,
                keep_images=keep_images,
                target_fpir=float(target_fpir),
            )
            return self._collection_info(session, row)

    def collections(self) -> list[CollectionInfo]:
        """Every collection, by name."""
        with self._reading() as session:
            rows = session.scalars(
                select(CollectionRow)
                .where(~CollectionRow.name.startswith(STAGING))
                .order_by(CollectionRow.name)
            ).all()
            return [self._collection_info(session, r) for r in rows]

    def collection(self, name: str) -> CollectionInfo:
        """One collection; :class:`NotFound` when absent."""
        with self._reading() as session:
            return self._collection_info(session, self._collection(session, name))

    def require_collection(self, name: str) -> None:
        """:class:`NotFound` unless collection ``name`` exists: the check a photo route makes
        before it decodes anything, without :meth:`collection`'s person and template counts
        (two ``count(*)``, ~10% of a photo identify's samples on a 100k collection)."""
        with self._reading() as session:
            self._collection(session, name)

    def delete_collection(
        self, name: str, *, purpose: str | None = None, actor: str | None = None
    ) -> int:
        """Delete a collection with every person, consent record and template, from store and
        index at once; returns the templates removed."""
        with self._lock:
            with self._transaction() as (session, state):
                coll = self._collection(session, name)
                info = self._collection_info(session, coll)
                coll_id = coll.id
                edge_events = self._purge_edge(session, name)
                self._erase_rows(session, coll_id)
                self._audit(
                    session,
                    state,
                    "collection.delete",
                    actor=actor,
                    collection=name,
                    purpose=purpose,
                    persons_removed=info.persons,
                    templates_removed=info.templates,
                    edge_events_removed=edge_events,
                )
                self._indexes.drop_snapshot(coll_id)
            self._indexes.forget(coll_id)
            self._points.pop(coll_id, None)
            self._journal.erase()
            return info.templates

    # ------------------------------------------------------------------ persons & consent

    def add_person(
        self,
        collection: str,
        display_name: str,
        *,
        external_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> PersonInfo:
        """Add a person (no templates, no consent yet). :class:`Conflict` on a taken external id;
        :class:`InputError` for a name or external id that :func:`person_text` refuses."""
        display_name = person_text("display name", display_name)
        if external_id is not None:
            external_id = person_text("external id", external_id)
        with self._lock, self._transaction() as (session, state):
            coll = self._collection(session, collection)
            if external_id is not None and session.scalar(
                select(PersonRow.id).where(
                    PersonRow.collection_id == coll.id, PersonRow.external_id == external_id
                )
            ):
                raise Conflict(f"external id {external_id!r} is taken in {collection!r}")
            row = PersonRow(
                id=uuid.uuid4().hex,
                collection_id=coll.id,
                display_name=display_name,
                external_id=external_id,
                meta=dict(metadata or {}),
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            self._audit(
                session,
                state,
                "person.create",
                actor=actor,
                collection=collection,
                person=row.id,
                external_id=external_id,
            )
            return self._person_info(session, coll, row)

    def person(
        self,
        collection: str,
        ref: str,
        *,
        reader: str | None = None,
        purpose: str | None = None,
        part: str = "record",
    ) -> PersonInfo:
        """A person by id or external id; :class:`NotFound` when absent. Audited as
        ``person.read`` of ``part`` (``record``, ``consents``) when read for a ``reader``."""
        with self._reading() as session:
            coll = self._collection(session, collection)
            info = self._person_info(session, coll, self._person(session, coll, ref))
        self._audit_read(
            "person.read", reader=reader, collection=collection, purpose=purpose,
            person=info.id, part=part,
        )  # fmt: skip
        return info

    def persons(
        self,
        collection: str,
        *,
        offset: int = 0,
        limit: int = 100,
        reader: str | None = None,
        purpose: str | None = None,
        search: str | None = None,
    ) -> list[PersonInfo]:
        """Persons of a collection in creation order, one page; ``search``: only those whose
        display name or external id contains it (case-insensitive, ``%`` and ``_`` literal),
        filtered in the store so a 100k-person collection is never read whole. Audited as
        ``person.list`` (the page asked for, the search and the ids returned) when read for a
        ``reader``."""
        with self._reading() as session:
            coll = self._collection(session, collection)
            query = select(PersonRow).where(PersonRow.collection_id == coll.id)
            if search:
                pattern = "%" + re.sub(r"([\\%_])", r"\\\1", search) + "%"
                query = query.where(
                    PersonRow.display_name.ilike(pattern, escape="\\")
                    | PersonRow.external_id.ilike(pattern, escape="\\")
                )
            rows = session.scalars(
                query.order_by(PersonRow.created_at, PersonRow.id).offset(offset).limit(limit)
            ).all()
            found = [self._person_info(session, coll, r) for r in rows]
        self._audit_read(
            "person.list", reader=reader, collection=collection, purpose=purpose,
            offset=offset, limit=limit, persons=[p.id for p in found],
            **({"search": search} if search else {}),
        )  # fmt: skip
        return found

    def update_person(
        self,
        collection: str,
        person: str,
        *,
        display_name: str | None = None,
        external_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> PersonInfo:
        """Change what is given of a person's display name, external id and metadata (metadata
        is replaced whole). :class:`Conflict` on an external id taken by someone else."""
        if display_name is not None:
            display_name = person_text("display name", display_name)
        if external_id is not None:
            external_id = person_text("external id", external_id)
        with self._lock, self._transaction() as (session, state):
            coll = self._collection(session, collection)
            row = self._person(session, coll, person)
            if (
                external_id is not None
                and external_id != row.external_id
                and session.scalar(
                    select(PersonRow.id).where(
                        PersonRow.collection_id == coll.id, PersonRow.external_id == external_id
                    )
                )
            ):
                raise Conflict(f"external id {external_id!r} is taken in {collection!r}")
            changed = {
                "display_name": display_name,
                "external_id": external_id,
                "metadata": metadata,
            }
            if display_name is not None:
                row.display_name = display_name
            if external_id is not None:
                row.external_id = external_id
            if metadata is not None:
                row.meta = dict(metadata)
            self._audit(
                session,
                state,
                "person.update",
                actor=actor,
                collection=collection,
                person=row.id,
                fields=sorted(k for k, v in changed.items() if v is not None),
            )
            return self._person_info(session, coll, row)

    def grant_consent(
        self,
        collection: str,
        person: str,
        *,
        basis: str | ConsentBasis,
        granted_by: str,
        purpose: str | None = None,
        granted_at: datetime | None = None,
        expires_at: datetime | None = None,
        actor: str | None = None,
    ) -> ConsentInfo:
        """Record consent (or another lawful basis) for a person; required before enrollment.

        Datetimes must be timezone-aware. :class:`InputError` for an unknown basis, a missing
        grantor or an expiry not after the grant.
        """
        basis_value, start, expires_at = _consent_fields(basis, granted_by, granted_at, expires_at)
        with self._lock, self._transaction() as (session, state):
            coll = self._collection(session, collection)
            row_person = self._person(session, coll, person)
            row = ConsentRow(
                person_id=row_person.id,
                basis=basis_value,
                purpose=purpose,
                granted_by=granted_by,
                granted_at=start,
                expires_at=expires_at,
            )
            session.add(row)
            session.flush()
            self._audit(
                session,
                state,
                "consent.grant",
                actor=actor,
                collection=collection,
                purpose=purpose,
                person=row_person.id,
                consent=row.id,
                basis=basis_value,
                expires_at=expires_at.isoformat() if expires_at else None,
            )
            return _consent_info(row, utcnow())

    def revoke_consent(
        self,
        collection: str,
        person: str,
        *,
        reason: str | None = None,
        actor: str | None = None,
    ) -> int:
        """Revoke every open consent record of a person and delete all their templates.

        One transaction: store, audit event, then the index. Returns the templates removed.
        :class:`ConsentError` when there is no open consent to revoke.
        """
        now = utcnow()
        with self._lock:
            with self._transaction() as (session, state):
                coll = self._collection(session, collection)
                row_person = self._person(session, coll, person)
                open_rows = session.scalars(
                    select(ConsentRow).where(
                        ConsentRow.person_id == row_person.id, ConsentRow.revoked_at.is_(None)
                    )
                ).all()
                if not open_rows:
                    raise ConsentError(f"person {row_person.id} has no open consent to revoke")
                for row in open_rows:
                    row.revoked_at = now
                    row.revoked_by = actor or self.actor
                    row.revoke_reason = reason
                removed = self._delete_templates(session, coll, row_person.id)
                edge_events = self._purge_edge(session, collection, row_person.id)
                self._audit(
                    session,
                    state,
                    "consent.revoke",
                    actor=actor,
                    collection=collection,
                    person=row_person.id,
                    consents=[r.id for r in open_rows],
                    templates_removed=len(removed),
                    edge_events_removed=edge_events,
                    reason=reason,
                )
                coll_id, version = coll.id, coll.version
            if removed:
                self._erased(coll_id, version, removed)
            return len(removed)

    @staticmethod
    def _purge_edge(session: Session, collection: str, person_id: str | None = None) -> int:
        """Delete the edge events (crops included) recorded for ``person_id`` in ``collection``;
        with no person, every edge row of the collection (events, devices, snapshot records).
        Returns the events removed."""
        events = delete(EdgeEventRow).where(EdgeEventRow.collection == collection)
        if person_id is not None:
            events = events.where(EdgeEventRow.person_id == person_id)
        removed = int(cast(CursorResult[Any], session.execute(events)).rowcount)
        if person_id is not None:
            return removed
        session.execute(delete(EdgeDeviceRow).where(EdgeDeviceRow.collection == collection))
        session.execute(delete(EdgeSnapshotRow).where(EdgeSnapshotRow.collection == collection))
        return removed

    @staticmethod
    def consented_ids(
        session: Session, collection: str, person_ids: Iterable[str], now: datetime
    ) -> set[str]:
        """Those of ``person_ids`` that are persons of ``collection`` with valid consent at
        ``now``, read in the caller's transaction (the edge hub's, under the writer lock)."""
        ids = sorted(set(person_ids))
        found: set[str] = set()
        for part in _chunks(ids):
            found.update(
                session.scalars(
                    select(PersonRow.id)
                    .join(CollectionRow)
                    .where(
                        CollectionRow.name == collection,
                        PersonRow.id.in_(part),
                        _consent_valid(PersonRow.id, now),
                    )
                )
            )
        return found

    def delete_person(
        self,
        collection: str,
        person: str,
        *,
        purpose: str | None = None,
        actor: str | None = None,
    ) -> int:
        """Delete a person with their templates and consent records; returns templates removed."""
        with self._lock:
            with self._transaction() as (session, state):
                coll = self._collection(session, collection)
                row_person = self._person(session, coll, person)
                removed = self._delete_templates(session, coll, row_person.id)
                edge_events = self._purge_edge(session, collection, row_person.id)
                session.execute(delete(ConsentRow).where(ConsentRow.person_id == row_person.id))
                session.delete(row_person)
                self._audit(
                    session,
                    state,
                    "person.delete",
                    actor=actor,
                    collection=collection,
                    purpose=purpose,
                    person=row_person.id,
                    external_id=row_person.external_id,
                    templates_removed=len(removed),
                    edge_events_removed=edge_events,
                )
                coll_id, version = coll.id, coll.version
            self._erased(coll_id, version, removed)
            return len(removed)

    def templates(
        self,
        collection: str,
        person: str,
        *,
        reader: str | None = None,
        purpose: str | None = None,
    ) -> list[TemplateInfo]:
        """A person's templates, oldest first (their embeddings stay in the store). Audited as
        ``person.read`` of ``faces`` when read for a ``reader``."""
        with self._reading() as session:
            coll = self._collection(session, collection)
            row = self._person(session, coll, person)
            found = session.execute(
                select(
                    TemplateRow.id,
                    TemplateRow.model_id,
                    TemplateRow.quality,
                    TemplateRow.source_sha256,
                    TemplateRow.image.is_not(None),
                    TemplateRow.created_at,
                )
                .where(TemplateRow.person_id == row.id)
                .order_by(TemplateRow.id)
            ).all()
            person_id = row.id
        self._audit_read(
            "person.read", reader=reader, collection=collection, purpose=purpose,
            person=person_id, part="faces", templates=len(found),
        )  # fmt: skip
        return [TemplateInfo(t[0], person_id, t[1], t[2], t[3], bool(t[4]), t[5]) for t in found]

    def template_image(
        self,
        collection: str,
        person: str,
        template_id: int,
        *,
        reader: str | None = None,
        purpose: str | None = None,
    ) -> KeptImage:
        """The photo one of a person's templates was enrolled from; :class:`NotFound` unless the
        collection keeps images and holds that template's. Audited as ``person.read`` of
        ``image`` when read for a ``reader``."""
        with self._reading() as session:
            coll = self._collection(session, collection)
            if not coll.keep_images:
                raise NotFound(f"collection {collection!r} does not keep enrolled photos")
            row = self._person(session, coll, person)
            data = session.scalar(
                select(TemplateRow.image).where(
                    TemplateRow.id == template_id, TemplateRow.person_id == row.id
                )
            )
            person_id = row.id
        if data is None:
            raise NotFound(f"no kept photo for template {template_id} of person {person_id}")
        self._audit_read(
            "person.read", reader=reader, collection=collection, purpose=purpose,
            person=person_id, part="image", template=template_id,
        )  # fmt: skip
        return KeptImage(data, media_type(data))

    def delete_template(
        self,
        collection: str,
        person: str,
        template_id: int,
        *,
        purpose: str | None = None,
        actor: str | None = None,
    ) -> None:
        """Delete one template of a person, from store and index at once."""
        with self._lock:
            with self._transaction() as (session, state):
                coll = self._collection(session, collection)
                row_person = self._person(session, coll, person)
                mine = (TemplateRow.id == template_id, TemplateRow.person_id == row_person.id)
                if session.scalar(select(TemplateRow.id).where(*mine)) is None:
                    raise NotFound(f"no template {template_id} of person {row_person.id}")
                session.execute(delete(TemplateRow).where(*mine))
                coll.version += 1
                self._indexes.drop_snapshot(coll.id)
                self._audit(
                    session,
                    state,
                    "template.delete",
                    actor=actor,
                    collection=collection,
                    purpose=purpose,
                    person=row_person.id,
                    template=template_id,
                )
                coll_id, version = coll.id, coll.version
            self._erased(coll_id, version, [template_id])

    def _delete_templates(self, session: Session, coll: CollectionRow, person_id: str) -> list[int]:
        """Delete a person's templates and, before the commit, the snapshot that holds them."""
        ids = list(
            session.scalars(select(TemplateRow.id).where(TemplateRow.person_id == person_id))
        )
        if ids:
            session.execute(delete(TemplateRow).where(TemplateRow.person_id == person_id))
            coll.version += 1
            self._indexes.drop_snapshot(coll.id)
        return ids

    def _erased(self, coll_id: int, version: int, removed: Sequence[int]) -> None:
        """After an erasure commits: drop the templates from the in-memory index and truncate
        SQLite's write-ahead log, which still holds earlier images of their pages."""
        if removed:
            self._indexes.after_commit(coll_id, version, removed=removed)
        self._journal.erase()

    # ------------------------------------------------------------------ probes & photos

    def _resolve(
        self, collection: str, probe: Probe, face: FacePick, *, for_enrollment: bool = False
    ) -> tuple[_Vector, Face | None]:
        """A normalised vector (and its hash) from a Face, an embedding, or a photo.

        Runs outside any write transaction: embedding a photo takes far longer than a query.
        The photo's bytes are kept only for enrollment into a ``keep_images`` collection.
        """
        with self._reading() as session:
            coll = self._collection(session, collection)
        return self._resolve_for(coll, probe, face, keep_image=for_enrollment and coll.keep_images)

    def _resolve_for(
        self, coll: CollectionRow, probe: Probe, face: FacePick, *, keep_image: bool = False
    ) -> tuple[_Vector, Face | None]:
        """:meth:`_resolve` against a collection row already read."""
        if isinstance(probe, Face):
            if probe.embedding is None:
                raise InputError("this Face has no embedding: use Pipeline.embed()")
            if probe.model_id is not None and probe.model_id != coll.model_id:
                raise InputError(
                    f"embedding from model {probe.model_id}; collection {coll.name!r} holds "
                    f"{coll.model_id}"
                )
            vec = self._check_vector(coll, probe.embedding)
            return _Vector(
                vec, _sha256(_vector_bytes(vec)), coll.model_id, probe.quality.score
            ), probe
        if isinstance(probe, ImageResult):
            return self._resolve_result(coll, probe, face, keep_image)
        if isinstance(probe, np.ndarray):
            vec = self._check_vector(coll, probe)
            return _Vector(vec, _sha256(_vector_bytes(vec)), coll.model_id), None
        data, name = read_bytes(probe)
        pipe = self._get_pipeline()
        if pipe.model_id != coll.model_id:
            raise InputError(
                f"the pipeline embeds with {pipe.model_id}; collection {coll.name!r} holds "
                f"{coll.model_id}"
            )
        image = decode(data, max_pixels=pipe.config.max_pixels, source=name)
        chosen = pick_face(pipe.embed(image), face, image.shape[1], image.shape[0], name or "image")
        assert chosen.embedding is not None, "Pipeline.embed returns faces with embeddings"
        vector = _Vector(
            self._check_vector(coll, chosen.embedding),
            _sha256(data),
            coll.model_id,
            chosen.quality.score,
            data if keep_image else None,
        )
        return vector, chosen

    def _resolve_result(
        self, coll: CollectionRow, result: ImageResult, face: FacePick, keep_image: bool
    ) -> tuple[_Vector, Face]:
        """A photo embedded elsewhere (``visage enroll --ray``): the same face pick, model check
        and duplicate key (the photo's sha256) as a photo embedded here. Its bytes never reached
        this process, so a ``keep_images`` collection refuses it."""
        if result.error is not None:
            raise InvalidImage(result.error)
        if keep_image:
            raise InputError(f"collection {coll.name!r} keeps enrolled photos; enroll "
                             f"{result.source} from the photo itself (without --ray)")
        width, height = result.size or (0, 0)
        chosen = pick_face(result.faces, face, width, height, result.source)
        if chosen.embedding is None or chosen.model_id != coll.model_id:
            raise InputError(f"{result.source}: embedded with {chosen.model_id}; collection "
                             f"{coll.name!r} holds {coll.model_id}")
        vec = self._check_vector(coll, chosen.embedding)
        return _Vector(vec, result.sha256 or _sha256(_vector_bytes(vec)), coll.model_id,
                       chosen.quality.score), chosen

    @staticmethod
    def _check_vector(coll: CollectionRow, raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """:func:`visage.decision.unit_embedding` for ``coll``: the one embedding check."""
        try:
            return unit_embedding(raw, coll.dim)
        except InputError as exc:
            raise InputError(
                f"{exc} (collection {coll.name!r} holds {coll.dim}-d embeddings)"
            ) from None

    # ------------------------------------------------------------------ enrollment

    def enroll(
        self,
        collection: str,
        person: str,
        source: Probe,
        *,
        face: FacePick = None,
        purpose: str | None = None,
        actor: str | None = None,
    ) -> EnrollResult:
        """Add a template to a person from a photo (path or bytes), a :class:`Face`, or an embedding.

        Checks in this order: the person (:class:`NotFound`), consent (:class:`ConsentError`),
        then the photo (:class:`NoFace`, :class:`AmbiguousFace` for several faces and no
        ``face`` pick, :class:`PoorQuality`), so a refusal names the first thing wrong and no
        photo is embedded for nobody. The same source for the same person is idempotent.
        """
        with self._refusals("enroll", collection, purpose=purpose, actor=actor, person=person):
            with self._reading() as session:  # checked again in the write transaction
                self._consented(session, self._collection(session, collection), {person}, utcnow())
            resolved, chosen = self._resolve(collection, source, face, for_enrollment=True)
            if chosen is not None and not chosen.quality.acceptable:
                name = str(source) if isinstance(source, (str, Path)) else None
                raise PoorQuality(chosen.quality.reasons, source=name)
            item = EmbeddingItem(person, resolved.vector, resolved.quality, resolved.sha256)
            return self._enroll_batch(collection, [item], [resolved.image], purpose, actor)[0]

    def record_refusal(
        self,
        action: str,
        collection: str | None,
        exc: VisageError,
        *,
        purpose: str | None,
        actor: str | None,
        **summary: Any,
    ) -> int:
        """A refusal is a decision too: write ``<action>.refused`` (who, what, for whom, why;
        never the probe) and set ``exc.audit_seq``. Also for refusals decided by a shell
        before the gallery is reached (the server's per-photo face limit)."""
        with self._lock, self._transaction() as (session, state):
            exc.audit_seq = self._audit(
                session,
                state,
                f"{action}.refused",
                actor=actor,
                collection=collection,
                purpose=purpose,
                reason=type(exc).__name__,
                detail=str(exc),
                **summary,
            )
        return exc.audit_seq

    @contextmanager
    def _refusals(
        self,
        action: str,
        collection: str,
        *,
        purpose: str | None,
        actor: str | None,
        **summary: Any,
    ) -> Iterator[None]:
        """Audit a refusal (:data:`_REFUSALS`) raised in the block, after its transaction is gone."""
        try:
            yield
        except _REFUSALS as exc:
            self.record_refusal(action, collection, exc, purpose=purpose, actor=actor, **summary)
            raise

    def enroll_many(
        self,
        collection: str,
        items: Iterable[EmbeddingItem],
        *,
        batch_size: int = 500,
        purpose: str | None = None,
        actor: str | None = None,
        progress: Progress | None = None,
    ) -> list[EnrollResult]:
        """Enroll embeddings in batches; each batch (templates + audit events) is one transaction.

        A crash loses at most the batch in flight, never part of one. ``progress(done, total)``
        is called after each batch.
        """
        todo = list(items)
        results: list[EnrollResult] = []
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            with self._refusals(
                "enroll",
                collection,
                purpose=purpose,
                actor=actor,
                items=len(batch),
                persons=sorted({i.person for i in batch}),
            ):
                results.extend(
                    self._enroll_batch(collection, batch, [None] * len(batch), purpose, actor)
                )
            if progress is not None:
                progress(len(results), len(todo))
        return results

    def _enroll_batch(
        self,
        collection: str,
        items: Sequence[EmbeddingItem],
        images: Sequence[bytes | None],
        purpose: str | None,
        actor: str | None,
    ) -> list[EnrollResult]:
        """One transaction: consent checks, duplicate lookup, one multi-row insert, audit events."""
        now = utcnow()
        with self._lock:
            with self._transaction() as (session, state):
                coll = self._collection(session, collection)
                people = self._consented(session, coll, {item.person for item in items}, now)
                keyed: list[tuple[str, str, bytes, EmbeddingItem, bytes | None]] = []
                for item, image in zip(items, images):
                    _check_quality(item.quality)
                    blob = _vector_bytes(self._check_vector(coll, item.embedding))
                    digest = item.source_sha256 or _sha256(blob)
                    keyed.append((people[item.person], digest, blob, item, image))
                known = self._existing(session, {(pid, digest) for pid, digest, *_ in keyed})
                fresh: dict[tuple[str, str], int] = {}  # key -> position in ``rows``
                rows: list[dict[str, Any]] = []
                for pid, digest, blob, item, image in keyed:
                    if (pid, digest) not in known and (pid, digest) not in fresh:
                        fresh[(pid, digest)] = len(rows)
                        rows.append(
                            {
                                "person_id": pid,
                                "collection_id": coll.id,
                                "embedding": blob,
                                "model_id": coll.model_id,
                                "quality": item.quality,
                                "source_sha256": digest,
                                "created_at": now,
                                "image": image if coll.keep_images else None,
                            }
                        )
                new_ids: list[int] = []
                if rows:
                    insert_rows = insert(TemplateRow).returning(
                        TemplateRow.id, sort_by_parameter_order=True
                    )
                    new_ids = list(session.scalars(insert_rows, rows))
                    coll.version += 1
                results: list[EnrollResult] = []
                first_use: set[tuple[str, str]] = set()
                for pid, digest, _blob, item, _image in keyed:
                    key = (pid, digest)
                    created = key in fresh and key not in first_use
                    first_use.add(key)
                    if key in fresh:
                        result = EnrollResult(
                            pid, new_ids[fresh[key]], created, item.quality, digest
                        )
                    else:
                        template_id, quality = known[key]
                        result = EnrollResult(pid, template_id, False, quality, digest)
                    results.append(result)
                    self._audit(
                        session,
                        state,
                        "enroll",
                        actor=actor,
                        collection=collection,
                        purpose=purpose,
                        input_hash=digest,
                        person=pid,
                        template=result.template_id,
                        duplicate=not created,
                        quality=None if item.quality is None else round(item.quality, 4),
                    )
                coll_id, version = coll.id, coll.version
            if rows:
                vectors = np.frombuffer(b"".join(r["embedding"] for r in rows), "<f4")
                self._indexes.after_commit(
                    coll_id,
                    version,
                    added=(np.asarray(new_ids, np.int64), vectors.reshape(len(rows), coll.dim)),
                )
            return results

    def _consented(
        self, session: Session, coll: CollectionRow, refs: set[str], now: datetime
    ) -> dict[str, str]:
        """Person ids for ``refs`` (ids or external ids), all with valid consent at ``now``.

        Two queries for the whole batch; the first person failing either check raises
        :class:`NotFound` or :class:`ConsentError` with the reason.
        """
        found: dict[str, PersonRow] = {}
        for part in _chunks(sorted(refs)):
            rows = session.scalars(
                select(PersonRow).where(
                    PersonRow.collection_id == coll.id,
                    or_(PersonRow.id.in_(part), PersonRow.external_id.in_(part)),
                )
            )
            for row in rows:
                if row.id in refs:
                    found[row.id] = row
                if row.external_id in refs:
                    found.setdefault(row.external_id, row)
        for ref in sorted(refs - found.keys()):
            self._person(session, coll, ref)  # raises NotFound naming the ref
        ids = sorted({row.id for row in found.values()})
        valid: set[str] = set()
        for part in _chunks(ids):
            valid.update(
                session.scalars(
                    select(PersonRow.id).where(
                        PersonRow.id.in_(part), _consent_valid(PersonRow.id, now)
                    )
                )
            )
        for row in found.values():
            if row.id not in valid:
                self._require_consent(session, row, now)
        return {ref: row.id for ref, row in found.items()}

    @staticmethod
    def _existing(
        session: Session, keys: set[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, float | None]]:
        """Templates already stored for ``(person id, source sha256)`` keys: id and quality."""
        found: dict[tuple[str, str], tuple[int, float | None]] = {}
        digests = sorted({digest for _, digest in keys})
        for part in _chunks(digests):
            rows = session.execute(
                select(
                    TemplateRow.id,
                    TemplateRow.person_id,
                    TemplateRow.source_sha256,
                    TemplateRow.quality,
                ).where(TemplateRow.source_sha256.in_(part))
            )
            for template_id, pid, digest, quality in rows:
                if (pid, digest) in keys:
                    found[(pid, digest)] = (template_id, quality)
        return found

    # ------------------------------------------------------------------ index upkeep

    def save_indexes(self) -> None:
        """Write snapshots of indexes changed since they were last saved (also done by close),
        under the writers' lock and only for the version the store holds."""
        with self._lock:
            changed = self._indexes.unsaved()
            if not self._indexes.persistent or not changed:
                return
            with self._transaction() as (session, _state):
                versions: dict[int, int] = {
                    row.id: row.version
                    for row in session.execute(
                        select(CollectionRow.id, CollectionRow.version).where(
                            CollectionRow.id.in_(changed)
                        )
                    )
                }
                for coll_id in changed:
                    self._indexes.save_snapshot(coll_id, versions.get(coll_id))

    def index(self, collection: str) -> VectorIndex:
        """The collection's index, brought in line with the store first (loaded or rebuilt)."""
        with self._lock, self._transaction() as (session, _state):
            return self._indexes.get(session, self._collection(session, collection))

    def resync_index(self, collection: str) -> int:
        """Rebuild the collection's index from the store now (a Milvus collection restored from
        an older backup or short of a write); returns the templates it holds."""
        with self._lock, self._transaction() as (session, _state):
            return self._indexes.resync(session, self._collection(session, collection)).count()

    # ------------------------------------------------------------------ decisions

    def _ranked(
        self,
        session: Session,
        coll: CollectionRow,
        vec: npt.NDArray[np.float32],
        k: int,
        *,
        per_person: bool,
    ) -> list[_Ranked]:
        """The candidate templates nearest first, consented persons only, in the read-only
        snapshot ``session``.

        The index proposes candidates; they are re-scored here with the one distance
        primitive from the snapshot's rows. With ``per_person`` each person appears once, at
        their best template. The index is asked for more until ``k`` are found or it is
        exhausted (expired consents and several templates per person are skipped that way).
        """
        fetch = max(4 * k, 32)
        now = utcnow()
        while True:
            with self._indexes.lock:  # writers change the index in place
                index = self._indexes.get(session, coll, reading=True)
                total = index.count()
                fetch = min(total, fetch)
                _, ids = index.search(vec[None, :], fetch)
            found = ids[0][ids[0] >= 0].tolist()
            rows = [
                row
                for part in _chunks(found)
                for row in session.connection().execute(
                    _CANDIDATES, {"ids": part, "collection": coll.id, "now": now}
                )
            ]
            ranked = _nearest(vec, rows, k, per_person=per_person)
            if len(ranked) >= k or fetch >= total:
                return ranked
            fetch = min(total, fetch * 4)

    def identify(
        self,
        collection: str,
        probe: Probe,
        *,
        k: int = 5,
        face: FacePick = None,
        min_quality: float = 0.0,
        purpose: str | None = None,
        actor: str | None = None,
        disclose: Disclosure = "all",
        input_hash: str | None = None,
    ) -> Identification:
        """Who is this? The ``k`` nearest consented persons (best template each) and the open-set
        answer: ``unknown`` unless the nearest is within the calibrated threshold; with
        ``disclose="matches"`` only those within it are returned (module docstring).

        ``probe``: a photo (path or bytes), a :class:`Face` or an embedding. Nothing about the
        probe is stored except its sha256 in the audit event (``input_hash``: the photo's, for a
        :class:`Face` from a photo the caller decoded). A face whose quality score is below
        ``min_quality`` is not searched: :class:`PoorQuality`, audited.
        """
        if k < 1:
            raise InputError("k must be at least 1")
        with (
            self._refusals("identify", collection, purpose=purpose, actor=actor, k=k),
            self._probe_search(collection, probe, face) as (session, coll, resolved),
        ):
            if resolved.quality is not None and resolved.quality < min_quality:
                raise PoorQuality(
                    [f"quality {resolved.quality:.3f} is below min_quality {min_quality}"]
                )
            # the second-nearest person sets the margin rule's bar, even when k is 1
            ranked = self._ranked(session, coll, resolved.vector, max(k, 2), per_person=True)
            point = self._operating_point(session, coll)
            version = coll.version
        bar = point.threshold_for(ranked[1].distance if len(ranked) > 1 else None)
        candidates = [
            Candidate(r.person_id, r.display_name, r.external_id, r.distance, r.distance <= bar,
                      r.template_id)
            for r in ranked[:k]
        ]  # fmt: skip
        unknown = not candidates or not candidates[0].same
        seq = self._audit_search(
            "identify", actor=actor, collection=collection, purpose=purpose,
            input_hash=input_hash or resolved.sha256, k=k, unknown=unknown,
            threshold=bar, margin=point.margin, target_fpir=point.target_fpir,
            templates=point.templates, supported=point.supported, version=version,
            candidates=[
                {"person": c.person_id, "distance": round(c.distance, 6), "same": c.same}
                for c in candidates
            ],
            disclose=disclose,
        )  # fmt: skip
        shown = [c for c in candidates if _disclosed(disclose, c.same)]
        return Identification(tuple(shown), unknown, bar, point.describe(), seq, point)

    def identify_faces(
        self,
        collection: str,
        photo: Source,
        *,
        k: int = 5,
        purpose: str | None = None,
        actor: str | None = None,
    ) -> list[tuple[Face, Identification]]:
        """Every face of ``photo`` identified, largest first: one audited identify each, with the
        photo's sha256 as its input hash. A photo without a face is the (audited) NoFace."""
        data, name = read_bytes(photo)
        pipe = self._get_pipeline()
        image = decode(data, max_pixels=pipe.config.max_pixels, source=name)
        faces = pipe.embed(image)
        if not faces:
            self.identify(collection, data, k=k, purpose=purpose, actor=actor)  # raises NoFace
        digest = source_hash(data)
        return [
            (f, self.identify(collection, f, k=k, purpose=purpose, actor=actor, input_hash=digest))
            for f in faces
        ]

    def _operating_point(self, session: Session, coll: CollectionRow) -> OpenSetPoint:
        """The threshold for ``coll``'s target FPIR at its current size, cached per version.

        Counted in ``session``'s snapshot at ``coll.version``; a model without a shipped
        open-set calibration keeps its per-comparison threshold, stated as ``basis="fixed"``,
        ``supported=False``.
        """
        key = (coll.version, coll.target_fpir, coll.open_set)
        cached = self._points.get(coll.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        templates, persons = session.execute(
            select(func.count(), func.count(func.distinct(TemplateRow.person_id))).where(
                TemplateRow.collection_id == coll.id
            )
        ).one()
        point = self.operating_point(
            coll.model_id, coll.target_fpir, templates, persons, own=coll.open_set
        )
        self._points[coll.id] = (key, point)
        return point

    def collection_threshold(self, collection: str) -> OpenSetPoint:
        """The identify threshold ``collection`` uses now (its target FPIR at its current
        size) and how it was derived: what identify would answer with, before any search."""
        with self._reading() as session:
            return self._operating_point(session, self._collection(session, collection))

    def operating_point(
        self,
        model_id: str,
        target_fpir: float,
        templates: int,
        persons: int,
        *,
        own: str | None = None,
    ) -> OpenSetPoint:
        """The identify threshold holding ``target_fpir`` for a gallery of this size: the one
        rule for the gallery's identify and for an edge snapshot's offline decisions. ``own``:
        the collection's own open-set calibration (JSON, :meth:`calibrate_collection`), used
        instead of the model's shipped one."""
        open_set = _own_open_set(own) if own is not None else default_open_set(model_id)
        if open_set is None:
            cal = self.calibration(model_id)
            return OpenSetPoint(target_fpir, persons, templates, cal.threshold, False, "fixed")
        return identify_point(open_set, target_fpir, templates, persons)

    def calibrate_collection(
        self, collection: str, record: OpenSetCalibration, *, actor: str | None = None
    ) -> CollectionInfo:
        """Make ``record`` (measured on the operator's own labelled photos, e.g. by ``visage
        calibrate --folder``) the open-set calibration ``collection``'s identify derives its rule
        from, instead of the model's shipped one; audited as ``collection.calibrate``. The
        record must be for the collection's model family."""
        with self._lock, self._transaction() as (session, state):
            coll = self._collection(session, collection)
            if model_family(record.model_id) != model_family(coll.model_id):
                raise InputError(
                    f"the calibration is for {record.model_id!r}; {collection!r} holds "
                    f"{coll.model_id!r} embeddings"
                )
            coll.open_set = json.dumps(asdict(record), sort_keys=True)
            self._audit(
                session, state, "collection.calibrate", actor=actor, collection=collection,
                source=record.source, probes=record.n_probes,
                impostor_pairs=record.n_impostor, sizes=record.sizes[-1],
            )  # fmt: skip
            return self._collection_info(session, coll)

    def verify(
        self,
        collection: str,
        person: str,
        probe: Probe,
        *,
        face: FacePick = None,
        purpose: str | None = None,
        actor: str | None = None,
    ) -> Verification:
        """Is this that person? Distance to their best template and the calibrated decision.

        :class:`ConsentError` (audited) when the person has no valid consent; :class:`NotFound`
        when they have no template.
        """
        with self._refusals("verify", collection, purpose=purpose, actor=actor, person=person):
            with self._probe_search(collection, probe, face) as (session, coll, resolved):
                prow = self._person(session, coll, person)
                self._require_consent(session, prow, utcnow())
                rows = session.execute(
                    select(TemplateRow.id, TemplateRow.embedding).where(
                        TemplateRow.person_id == prow.id
                    )
                ).all()
                if not rows:
                    raise NotFound(f"person {prow.id} has no enrolled template")
            cal = self.calibration(resolved.model_id)
            dist = distances(
                resolved.vector, np.stack([np.frombuffer(r.embedding, "<f4") for r in rows])
            )
            best = int(np.argmin(dist))
            verdict = decide(float(dist[best]), cal)
            seq = self._audit_search(
                "verify", actor=actor, collection=collection, purpose=purpose,
                input_hash=resolved.sha256, person=prow.id, distance=round(verdict.distance, 6),
                same=verdict.same, threshold=cal.threshold,
            )  # fmt: skip
        return Verification(
            prow.id,
            verdict.distance,
            verdict.same,
            cal.threshold,
            cal.describe(),
            int(rows[best].id),
            seq,
            cal.target_fmr,
            cal.fnmr,
        )

    def find_similar(
        self,
        collection: str,
        probe: Probe,
        *,
        k: int = 10,
        face: FacePick = None,
        purpose: str | None = None,
        actor: str | None = None,
        disclose: Disclosure = "all",
        input_hash: str | None = None,
    ) -> list[SimilarFace]:
        """The ``k`` nearest templates (several may belong to one person), with no decision;
        with ``disclose="matches"`` only those within the calibrated threshold. ``input_hash``:
        as for :meth:`identify`."""
        if k < 1:
            raise InputError("k must be at least 1")
        with (
            self._refusals("find_similar", collection, purpose=purpose, actor=actor, k=k),
            self._probe_search(collection, probe, face) as (session, coll, resolved),
        ):
            ranked = self._ranked(session, coll, resolved.vector, k, per_person=False)
        cal = self.calibration(resolved.model_id)
        found = [SimilarFace(r.template_id, r.person_id, r.display_name, r.distance)
                 for r in ranked]  # fmt: skip
        self._audit_search(
            "find_similar", actor=actor, collection=collection,
            purpose=purpose, input_hash=input_hash or resolved.sha256, k=k,
            results=[{"template": f.template_id, "person": f.person_id,
                      "distance": round(f.distance, 6)} for f in found],
            disclose=disclose,
        )  # fmt: skip
        return [f for f in found if _disclosed(disclose, decide(f.distance, cal).same)]

    # ------------------------------------------------------------------ audit

    def audit_events(
        self,
        *,
        collection: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: int = 0,
        before: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
        reader: str | None = None,
        purpose: str | None = None,
    ) -> list[audit.AuditEvent]:
        """Audit events with ``after < seq < before`` and ``since <= at < until``, oldest first
        or newest first; :class:`InputError` for a naive time or ``since`` after ``until``.
        Audited as ``audit.read`` (the query and the seqs returned) when read for a
        ``reader``; those events are listed only with ``action="audit.read"``
        (:func:`visage.store.audit.events`)."""
        start = _utc("since", since) if since is not None else None
        end = _utc("until", until) if until is not None else None
        if start is not None and end is not None and start > end:
            raise InputError(f"since {start.isoformat()} is after until {end.isoformat()}")
        with self._reading() as session:
            found = audit.events(
                session,
                collection=collection,
                action=action,
                actor=actor,
                since=start,
                until=end,
                after=after,
                before=before,
                limit=limit,
                newest_first=newest_first,
            )
        self._audit_read(
            audit.LOG_READ, reader=reader, collection=collection, purpose=purpose,
            query={"action": action, "actor": actor, "after": after, "before": before,
                   "since": start and start.isoformat(), "until": end and end.isoformat(),
                   "limit": limit, "order": "newest" if newest_first else "oldest"},
            events=len(found), seqs=[found[0].seq, found[-1].seq] if found else None,
        )  # fmt: skip
        return found

    def verify_audit(
        self, *, anchors: str | Path | None = None, public_key: str | None = None
    ) -> audit.ChainReport:
        """Walk the audit hash chain, then check it against the signed checkpoints in
        ``anchors`` (default: this store's anchor file, when it exists); the report names the
        first broken link or the cut.

        ``public_key`` (``ed25519:…``) is the key trusted to have signed them; by default, the
        public half of the anchor signing key (pin your own copy: see docs/gallery.md).
        """
        path = Path(anchors) if anchors is not None else self.anchors
        # the anchor file's size before the chain's snapshot: later checkpoints are not a cut
        upto = path.stat().st_size if path is not None and path.is_file() else None
        with self._reading() as session:
            if path is None or (anchors is None and not path.exists()):
                return audit.verify_chain(session)
            if not path.is_file():
                raise InputError(f"no audit anchor file at {path}")
            trusted = self._trusted_anchor_key(path, public_key)
            return audit.verify_anchored(session, path, trusted, upto)

    @staticmethod
    def _trusted_anchor_key(path: Path, public_key: str | None) -> Ed25519PublicKey:
        if public_key is not None:
            return parse_public_key(public_key)
        key_file = anchor.anchor_key_file(path)
        if not key_file.is_file():
            raise InputError(
                f"no signing key {key_file} for the checkpoints in {path}: give the public key "
                "they were signed with (ed25519:…)"
            )
        return load_signing_key(key_file).public_key()

    def anchor_public_key(self) -> str:
        """The public key (``ed25519:…``) that signs this store's checkpoints, to keep elsewhere."""
        if self.anchors is None:
            raise InputError(
                f"this store is not anchored: set {anchor.ANCHORS_ENV} to an anchor file"
            )
        return public_key_text(
            load_signing_key(anchor.anchor_key_file(self.anchors), create=True).public_key()
        )

    # ------------------------------------------------------------------ export / import

    def export_collection(
        self,
        collection: str,
        path: str | Path,
        *,
        purpose: str | None = None,
        actor: str | None = None,
        progress: Progress | None = None,
    ) -> TransferSummary:
        """Write a collection (persons, consent records, embeddings; never images) as JSON lines.

        The first line is a header; then one line per person with their consents and templates
        (embeddings base64 little-endian float32). Written to a temporary file and renamed.
        """
        dest = Path(path)
        digest = hashlib.sha256()
        n_templates = 0
        with self._reading() as session, private_temporary(dest) as (tmp, fh):
            coll = self._collection(session, collection)
            total = int(
                session.scalar(
                    select(func.count())
                    .select_from(PersonRow)
                    .where(PersonRow.collection_id == coll.id)
                )
                or 0
            )

            def write(record: dict[str, Any]) -> None:
                line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
                digest.update(line)
                fh.write(line)

            write(export_format.header(coll, total))
            for done, record in enumerate(self._export_records(session, coll.id), 1):
                n_templates += len(record["templates"])
                write(record)
                if progress is not None:
                    progress(done, total)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            with self._lock, self._transaction() as (session, state):
                self._audit(
                    session,
                    state,
                    "collection.export",
                    actor=actor,
                    collection=collection,
                    purpose=purpose,
                    persons=total,
                    templates=n_templates,
                    sha256=digest.hexdigest(),
                    path=str(dest),
                )
        except BaseException:
            tmp.unlink(missing_ok=True)  # an export not audited is not handed out
            raise
        os.replace(tmp, dest)
        return TransferSummary(collection, dest, total, n_templates, digest.hexdigest())

    @staticmethod
    def _export_records(session: Session, coll_id: int) -> Iterator[dict[str, Any]]:
        """The collection's persons in id order as export records."""
        for prow, consents, templates in _person_pages(session, coll_id):
            yield export_format.person_record(prow, consents, templates)

    def consented_templates(
        self, collection: str, *, purpose: str | None = None, actor: str | None = None
    ) -> ConsentedTemplates:
        """The persons ``collection`` can match now and their templates, from one read-only
        snapshot (no writers' lock, 3 queries per 1,000 persons); audited as an export, since
        the templates leave the gallery (e.g. in an edge snapshot)."""
        now = utcnow()
        with self._reading() as session:
            coll = self._collection(session, collection)
            info, version, persons = self._collection_info(session, coll), coll.version, []
            for prow, consents, templates in _person_pages(session, coll.id):
                blobs = [t.embedding for t in templates if t.model_id == coll.model_id]
                person = PersonInfo(
                    id=prow.id, collection=coll.name, display_name=prow.display_name,
                    external_id=prow.external_id, metadata=dict(prow.meta),
                    created_at=prow.created_at, templates=len(templates),
                    consents=tuple(_consent_info(c, now) for c in consents),
                )  # fmt: skip
                if blobs and person.consent_valid:
                    vectors = np.frombuffer(b"".join(blobs), "<f4").reshape(len(blobs), coll.dim)
                    persons.append(ConsentedPerson(person, vectors.astype(np.float32)))
        with self._lock, self._transaction() as (session, state):
            self._audit(
                session, state, "collection.export", actor=actor, collection=collection,
                purpose=purpose, persons=len(persons), version=version,
                templates=sum(len(p.embeddings) for p in persons),
            )  # fmt: skip
        return ConsentedTemplates(info, version, tuple(persons), coll.open_set)

    def import_collection(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        purpose: str | None = None,
        actor: str | None = None,
        progress: Progress | None = None,
    ) -> TransferSummary:
        """Load an export into a new collection (``name`` or the exported one), streamed.

        Every rule enrollment applies holds here, by the same functions: a person with templates
        needs a valid consent record now, names pass :func:`person_text`, consent records pass
        the grant checks, every embedding passes :func:`visage.decision.unit_embedding` (and is
        stored normalised); the header must name a known model at its embedding size. The file
        is read line by line and written :data:`IMPORT_BATCH` persons a transaction into a
        staging collection that no name reaches (:data:`STAGING`), renamed to its name in the
        last transaction with the audit event: memory stays bounded whatever the file's size,
        other writers wait at most one batch, and nobody sees a half-imported collection. The
        first record that fails refuses the whole file, naming its line: what was staged is
        erased (WAL included) and the refusal audited (``collection.import.refused``).
        Person ids are kept unless already taken in this store (importing a copy beside the
        original), in which case new ids are drawn and counted in ``rekeyed``.
        :class:`Conflict` when the collection exists. ``progress(bytes read, file size)``.
        """
        source = Path(path)
        target = name
        try:
            with export_format.ExportReader.open(source) as reader:
                lines = reader.records()
                header = self._export_header(source, next(lines, (1, None))[1])
                target = collection_name(name or str(header["collection"]))
                summary = self._import(reader, lines, header, target, purpose, actor, progress)
        except (InputError, ConsentError, Conflict) as exc:
            self.record_refusal(
                "collection.import",
                target or None,
                exc,
                purpose=purpose,
                actor=actor,
                sha256=export_format.file_sha256(source),
                path=str(source),
            )
            raise
        return summary

    def _export_header(self, source: Path, header: Any) -> dict[str, Any]:
        """The export's first line, checked: our format and version, a collection name, and a
        model this gallery knows at that model's embedding size."""
        if (
            not isinstance(header, dict)
            or header.get("format") != export_format.EXPORT_FORMAT
            or header.get("version") != export_format.EXPORT_VERSION
        ):
            raise InputError(
                f"{source}: not a Visage collection export (version {export_format.EXPORT_VERSION})"
            )
        for key, kind in (("collection", str), ("model_id", str), ("dim", int)):
            if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
                raise InputError(
                    f"{source} line 1: the header's {key!r} is missing or not a {kind.__name__}"
                )
        model, dim = header["model_id"], header["dim"]
        known = embedding_dim(model)
        if known is None and model not in self._calibrations:
            raise InputError(
                f"{source} line 1: unknown model {model!r} (this gallery knows "
                f"{', '.join(sorted(EMBEDDING_DIMS))})"
            )
        if dim != (known or dim) or not 1 <= dim <= 4096:
            raise InputError(
                f"{source} line 1: dim {dim} is not model {model!r}'s embedding size"
                + (f" ({known})" if known else " (1 to 4096)")
            )
        return header

    def _import(
        self,
        reader: export_format.ExportReader,
        lines: Iterator[tuple[int, Any]],
        header: dict[str, Any],
        target: str,
        purpose: str | None,
        actor: str | None,
        progress: Progress | None,
    ) -> TransferSummary:
        """Stage the records in batches, then publish the collection with its audit event."""
        source = reader.source
        with self._lock, self._transaction() as (session, _):
            stale = self._drop_stale_staging(session)
            if session.scalar(select(CollectionRow.id).where(CollectionRow.name == target)):
                raise Conflict(f"collection {target!r} already exists")
            staged = CollectionRow(
                name=f"{STAGING}{uuid.uuid4().hex}",
                model_id=header["model_id"],
                dim=header["dim"],
                keep_images=False,
                version=0,
                created_at=utcnow(),
            )
            session.add(staged)
            session.flush()
            coll_id = staged.id
        if stale:
            self._journal.erase()
        counts = _ImportCounts()
        try:
            seen: set[str] = set()
            batch: list[tuple[int, Any]] = []
            for number, record in lines:
                batch.append((number, record))
                if len(batch) == IMPORT_BATCH:
                    self._import_batch(source, staged, batch, seen, counts)
                    if progress is not None:
                        progress(reader.read, reader.size)
                    batch = []
            self._import_batch(source, staged, batch, seen, counts)
            with self._lock, self._transaction() as (session, state):
                if session.scalar(select(CollectionRow.id).where(CollectionRow.name == target)):
                    raise Conflict(f"collection {target!r} already exists")
                coll = session.get_one(CollectionRow, coll_id)
                coll.name, coll.created_at = target, utcnow()
                coll.version = state.audit_seq + 1  # see CollectionRow.version
                self._audit(
                    session,
                    state,
                    "collection.import",
                    actor=actor,
                    collection=target,
                    purpose=purpose,
                    persons=counts.persons,
                    templates=counts.templates,
                    sha256=reader.digest.hexdigest(),
                    source_collection=header["collection"],
                    rekeyed=counts.rekeyed,
                )
        except BaseException:
            self._drop_staged(coll_id)
            raise
        return TransferSummary(
            target,
            source,
            counts.persons,
            counts.templates,
            reader.digest.hexdigest(),
            renamed_from=str(header["collection"]) if target != header["collection"] else None,
            rekeyed=counts.rekeyed,
        )

    def _import_batch(
        self,
        source: Path,
        coll: CollectionRow,
        batch: Sequence[tuple[int, Any]],
        seen: set[str],
        counts: _ImportCounts,
    ) -> None:
        """Check and insert one batch of exported persons in one transaction; a person id
        already taken in the store (or earlier in the file) is redrawn."""
        if not batch:
            return
        now = utcnow()
        people = []
        for number, record in batch:  # checked before the transaction: it holds writers up
            try:
                people.append(self._import_person(coll, record, seen, now))
            except ConsentError as exc:
                raise ConsentError(f"{source} line {number}: {exc}") from None
            except InputError as exc:
                raise InputError(f"{source} line {number}: {exc}") from None
        with self._lock, self._transaction() as (session, _):
            session.get_one(CollectionRow, coll.id).created_at = now  # the staging heartbeat
            wanted = [person.id for person, _, _ in people]
            taken = set(session.scalars(select(PersonRow.id).where(PersonRow.id.in_(wanted))))
            for person, consents, templates in people:
                if person.id in taken:
                    person.id = uuid.uuid4().hex
                    counts.rekeyed += 1
                taken.add(person.id)
                for consent in consents:
                    consent.person_id = person.id
                for template in templates:
                    template.person_id = person.id
                counts.persons += 1
                counts.templates += len(templates)
            session.add_all([person for person, _, _ in people])
            session.flush()  # no ORM relationships, so the person rows must exist first
            session.add_all(
                [row for _, consents, templates in people for row in (*consents, *templates)]
            )

    @classmethod
    def _drop_stale_staging(cls, session: Session) -> bool:
        """Erase collections a crashed import left staged (no batch for
        :data:`STAGING_STALE_S`); nobody could reach them, and their templates must not stay."""
        cutoff = utcnow() - timedelta(seconds=STAGING_STALE_S)
        stale = session.scalars(
            select(CollectionRow.id).where(
                CollectionRow.name.startswith(STAGING), CollectionRow.created_at < cutoff
            )
        ).all()
        for coll_id in stale:
            cls._erase_rows(session, coll_id)
        return bool(stale)

    def _drop_staged(self, coll_id: int) -> None:
        """Erase a refused import's staged rows, then the WAL pages that held them."""
        with self._lock, self._transaction() as (session, _):
            self._erase_rows(session, coll_id)
        self._journal.erase()

    @staticmethod
    def _erase_rows(session: Session, coll_id: int) -> None:
        """Delete a collection's templates, consent records, persons and row (secure delete)."""
        persons = select(PersonRow.id).where(PersonRow.collection_id == coll_id)
        session.execute(delete(TemplateRow).where(TemplateRow.collection_id == coll_id))
        session.execute(delete(ConsentRow).where(ConsentRow.person_id.in_(persons)))
        session.execute(delete(PersonRow).where(PersonRow.collection_id == coll_id))
        session.execute(delete(CollectionRow).where(CollectionRow.id == coll_id))

    def _import_person(
        self,
        coll: CollectionRow,
        record: Any,
        seen: set[str],
        now: datetime,
    ) -> tuple[PersonRow, list[ConsentRow], list[TemplateRow]]:
        """One exported person checked by enrollment's rules, as unsaved rows (the caller
        settles the person id). ``seen`` collects the file's external ids so far."""

        def when(label: str, value: Any) -> datetime | None:
            if value is None:
                return None
            if not isinstance(value, str):
                raise InputError(f"{label} must be an ISO 8601 date-time")
            try:
                return _utc(label, datetime.fromisoformat(value))
            except ValueError:
                raise InputError(f"{label} {value!r} is not an ISO 8601 date-time") from None

        def text(label: str, value: Any) -> str | None:
            if value is not None and not isinstance(value, str):
                raise InputError(f"{label} must be text")
            return value

        try:
            p = record["person"]
            display_name = person_text("display name", p["display_name"])
            external_id = p["external_id"]
            if external_id is not None:
                external_id = person_text("external id", external_id)
                if external_id in seen:
                    raise InputError(f"external id {external_id!r} appears twice in the file")
                seen.add(external_id)
            person_id = person_text("person id", p["id"])
            if len(person_id) > 32:
                raise InputError(f"person id {person_id!r} is longer than 32 characters")
            if not isinstance(p["metadata"] or {}, dict):
                raise InputError("metadata must be an object")
            consents, templates = record["consents"], record["templates"]
            if not isinstance(consents, list) or not isinstance(templates, list):
                raise InputError("consents and templates must be lists")
            row = PersonRow(
                id=person_id,
                collection_id=coll.id,
                display_name=display_name,
                external_id=external_id,
                meta=p["metadata"] or {},
                created_at=when("created_at", p["created_at"]) or now,
            )
            consent_rows = []
            for c in consents:
                basis, granted_at, expires_at = _consent_fields(
                    c["basis"],
                    c["granted_by"],
                    when("granted_at", c["granted_at"]),
                    when("expires_at", c["expires_at"]),
                )
                consent_rows.append(
                    ConsentRow(
                        person_id=person_id,
                        basis=basis,
                        purpose=text("purpose", c["purpose"]),
                        granted_by=c["granted_by"],
                        granted_at=granted_at,
                        expires_at=expires_at,
                        revoked_at=when("revoked_at", c["revoked_at"]),
                        revoked_by=text("revoked_by", c["revoked_by"]),
                        revoke_reason=text("revoke_reason", c["revoke_reason"]),
                    )
                )
            if templates:
                _refuse_without_consent(row, consent_rows, now)
            digests: set[str] = set()
            template_rows = []
            for t in templates:
                if t["model_id"] != coll.model_id:
                    raise InputError(
                        f"a template of {p['id']} is from model {t['model_id']!r}; the export "
                        f"holds {coll.model_id!r}"
                    )
                blob = base64.b64decode(t["embedding"], validate=True)
                if len(blob) != 4 * coll.dim:
                    raise InputError(
                        f"a template of {p['id']} holds {len(blob)} bytes, not {4 * coll.dim}"
                    )
                vector = self._check_vector(coll, np.frombuffer(blob, "<f4"))
                digest = text("source_sha256", t["source_sha256"]) or _sha256(_vector_bytes(vector))
                if digest in digests:
                    raise InputError(f"two templates of {p['id']} share source_sha256 {digest}")
                digests.add(digest)
                template_rows.append(
                    TemplateRow(
                        person_id=person_id,
                        collection_id=coll.id,
                        embedding=_vector_bytes(vector),
                        model_id=coll.model_id,
                        quality=_check_quality(t["quality"]),
                        source_sha256=digest,
                        created_at=when("created_at", t["created_at"]) or now,
                    )
                )
        except KeyError as exc:
            raise InputError(f"malformed person record: no field {exc}") from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"malformed person record ({exc})") from None
        return row, consent_rows, template_rows


@dataclass
class _ImportCounts:
    """What an import has staged so far."""

    persons: int = 0
    templates: int = 0
    rekeyed: int = 0


def _refuse_without_consent(person: PersonRow, rows: Sequence[ConsentRow], now: datetime) -> None:
    """Raise :class:`ConsentError` saying why ``person`` has no valid consent at ``now`` among
    ``rows`` (its consent records, oldest first)."""
    statuses = [_consent_status(r, now) for r in rows]
    if "valid" in statuses:
        return
    if not rows:
        why = "no consent record"
    else:
        last, status = rows[-1], statuses[-1]
        when = {"revoked": last.revoked_at, "expired": last.expires_at}.get(status)
        moment = when or last.granted_at
        verb = {"revoked": "revoked", "expired": "expired"}.get(status, "starts")
        why = f"consent {verb} at {moment:%Y-%m-%d %H:%M} UTC"
    raise ConsentError(f"person {person.id} ({person.display_name}) has no valid consent: {why}")
