"""Request and response bodies, a family per resource (Create / Update / Public / List).

Responses are built from the gallery's frozen records with ``from_*`` constructors, so the
wire format is declared here once and the routes only pick which record to send.
"""

from __future__ import annotations

import base64
import struct
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from ..decision import FPIR_RANGE, Comparison
from ..gallery import (
    ConsentBasis,
    Identification,
)
from ..gallery.records import COLLECTION_NAME_MAX, COLLECTION_NAME_PATTERN
from ..pipeline import Face
from ..store.audit import ChainReport
from .problems import Problem

MAX_DIM = 1024
"""Longest embedding a request may carry (the collection's ``dim`` decides what fits)."""
MAX_BATCH = 1000
"""Most embeddings or items in one request (the ``max_batch`` setting may lower it)."""

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Vector = Annotated[list[Finite], Field(min_length=1, max_length=MAX_DIM)]
Name = Annotated[str, Field(min_length=1, max_length=300)]
CollectionName = Annotated[
    str,
    Field(
        max_length=COLLECTION_NAME_MAX,
        pattern=COLLECTION_NAME_PATTERN,
        description="1 to 200 letters, digits, '.', '_' and '-', starting with a letter or digit",
    ),
]


def _iso_text(value: object) -> object:
    """Times arrive as ISO 8601 text; a number, or text that is one (a query parameter's
    ``since=2026``), is refused rather than read as a Unix time."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and _is_number(value)):
        # pydantic turns a ValueError into a 422; a TypeError would escape as a 500.
        raise ValueError("expected an ISO 8601 date-time string with a time zone")
    return value


def _is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (what pydantic would take for a Unix time)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
Quality = Annotated[float, Field(strict=True, ge=0, le=1)]


class _Out(BaseModel):
    """Responses read straight from the gallery's records (their attributes, by name)."""

    model_config = ConfigDict(from_attributes=True)


class _In(BaseModel):
    """Request bodies: unknown fields are refused, not ignored. Each carries an example in
    the OpenAPI document (``/docs``), valid as it stands (``tests/server/test_examples.py``)."""

    model_config = ConfigDict(extra="forbid")


EXAMPLE_VECTOR = [round(1 / 128**0.5, 6)] * 128
"""A unit vector of dlib's 128 dimensions, for examples only (it is nobody's face)."""

EXAMPLE_BASE64 = base64.b64encode(struct.pack("<128f", *EXAMPLE_VECTOR)).decode("ascii")
""":data:`EXAMPLE_VECTOR` as an edge device sends it (base64 of little-endian float32)."""


def example_config(**body: Any) -> ConfigDict:
    """A request body's configuration with ``body`` as its OpenAPI example."""
    return ConfigDict(json_schema_extra={"examples": [body]})


# ---------------------------------------------------------------- faces


class BoxOut(BaseModel):
    """A face box in pixels, clipped to the photo."""

    left: int
    top: int
    right: int
    bottom: int

    @classmethod
    def of(cls, box: tuple[int, int, int, int]) -> BoxOut:
        return cls(left=box[0], top=box[1], right=box[2], bottom=box[3])


class QualityOut(BaseModel):
    """The face's quality score (0..1), the reasons it would be refused, and the measures."""

    score: float
    acceptable: bool
    reasons: list[str]
    size: float
    sharpness: float
    brightness: float
    yaw: float
    roll: float


class FaceOut(BaseModel):
    """One face: box, five landmarks (x, y), detector score, quality, optionally the embedding."""

    box: BoxOut
    landmarks: list[list[float]]
    score: float
    quality: QualityOut
    embedding: list[float] | None = None
    model_id: str | None = None

    @classmethod
    def from_face(cls, face: Face, *, embedding: bool = False) -> FaceOut:
        q = face.quality
        return cls(
            box=BoxOut.of(face.box),
            landmarks=face.landmarks.round(2).tolist(),
            score=round(face.score, 4),
            quality=QualityOut(
                score=round(q.score, 4),
                acceptable=q.acceptable,
                reasons=list(q.reasons),
                size=q.size,
                sharpness=round(q.sharpness, 2),
                brightness=round(q.brightness, 2),
                yaw=round(q.yaw, 2),
                roll=round(q.roll, 2),
            ),
            embedding=face.embedding.tolist() if embedding and face.embedding is not None else None,
            model_id=face.model_id if embedding else None,
        )


class DetectOut(BaseModel):
    """The faces found in a photo, largest first."""

    width: int
    height: int
    faces: list[FaceOut]
    audit_seq: int


class EmbeddingsIn(_In):
    """Probes given as embeddings (L2-normalised on arrival), e.g. from an edge device."""

    model_config = example_config(embeddings=[EXAMPLE_VECTOR])

    embeddings: list[Vector] = Field(min_length=1, max_length=MAX_BATCH)


class EmbeddingIn(_In):
    """One template given as an embedding, with the quality it was measured at, if known."""

    model_config = example_config(embedding=EXAMPLE_VECTOR, quality=0.91)

    embedding: Vector
    quality: Quality | None = None


# ---------------------------------------------------------------- decisions


class CalibrationOut(_Out):
    """A calibration record in full: what the ``calibration model@created`` in an answer's
    ``threshold_source`` refers to."""

    ref: str
    model_id: str
    threshold: float
    method: str
    target_fmr: float | None
    source: str
    created: str
    n_genuine: int
    n_impostor: int
    fnmr: float | None = None


class VerifyOut(BaseModel):
    """A 1:1 answer: the distance, the decision, and the calibrated threshold it used, with the
    FMR it was chosen for and the FNMR its calibration measured there."""

    distance: float
    same: bool
    threshold: float
    threshold_source: str
    target_fmr: float | None = None
    expected_fnmr: float | None = None
    person_id: str | None = None
    template_id: int | None = None
    box: BoxOut | None = Field(default=None, description="The face used in `photo` (two photos)")
    other_box: BoxOut | None = Field(default=None, description="The face used in `other_photo`")
    audit_seq: int

    @classmethod
    def from_comparison(
        cls, c: Comparison, audit_seq: int, box: BoxOut, other_box: BoxOut
    ) -> VerifyOut:
        return cls(
            distance=c.distance,
            same=c.same,
            threshold=c.threshold,
            threshold_source=c.threshold_source,
            target_fmr=c.target_fmr,
            expected_fnmr=c.expected_fnmr,
            box=box,
            other_box=other_box,
            audit_seq=audit_seq,
        )


class CandidateOut(_Out):
    """A person who may be the probe, scored by their nearest template."""

    person_id: str
    display_name: str
    external_id: str | None
    distance: float
    same: bool
    template_id: int


class OperatingPointOut(_Out):
    """The rule identify used: it holds ``target_fpir`` (the share of strangers named as
    someone) for a gallery of ``templates`` templates; ``supported`` is False where the
    calibration data had too few impostors for it (``basis`` says how it was derived).
    ``margin``: the score ``s1 - 0.5 * s2`` (cosine similarities of the two nearest persons) the
    nearest must reach, never beyond the distance ``ceiling``; without it, or with one person,
    the nearest distance alone against ``threshold``. ``expected_fnir``: the calibration's miss
    rate of enrolled persons at this point."""

    target_fpir: float
    persons: int
    templates: int
    threshold: float
    supported: bool
    basis: str
    margin: float | None = None
    ceiling: float | None = None
    expected_fnir: float | None = None


class IdentifiedFace(BaseModel):
    """One probe's answer. ``face`` is absent for embedding probes. A face below
    ``min_quality`` is not searched: ``skipped`` says so and the decision fields are absent."""

    index: int
    face: FaceOut | None = None
    candidates: list[CandidateOut] = []
    unknown: bool = True
    threshold: float | None = None
    threshold_source: str | None = None
    operating_point: OperatingPointOut | None = None
    skipped: str | None = None
    audit_seq: int | None = None

    @classmethod
    def from_identification(
        cls, index: int, face: FaceOut | None, i: Identification
    ) -> IdentifiedFace:
        return cls(
            index=index,
            face=face,
            unknown=i.unknown,
            threshold=i.threshold,
            threshold_source=i.threshold_source,
            operating_point=OperatingPointOut.model_validate(i.operating_point),
            audit_seq=i.audit_seq,
            candidates=[CandidateOut.model_validate(c) for c in i.candidates],
        )


class IdentifyOut(BaseModel):
    """Every face of the photo (or every embedding), each with ranked candidates."""

    faces: list[IdentifiedFace]
    audit_seq: int | None = Field(None, description="The event recorded when no face was found")


class SimilarOut(_Out):
    """A template near the probe; find-similar is a search, so there is no decision."""

    template_id: int
    person_id: str
    display_name: str
    distance: float


class SimilarFaces(BaseModel):
    """One probe's nearest templates."""

    index: int
    face: FaceOut | None = None
    similar: list[SimilarOut]


class FindSimilarOut(BaseModel):
    """The nearest templates for every face of the photo (or every embedding)."""

    faces: list[SimilarFaces]
    audit_seq: int | None = Field(None, description="The event recorded when no face was found")


class GroupMember(BaseModel):
    """A face in a group: which item (photo or embedding), which face of it, and for a photo
    its box and the filename the client sent."""

    item: int
    face: int
    box: BoxOut | None = None
    filename: str | None = None


class ItemProblem(BaseModel):
    """Why one item of a batch was not used; the rest of the batch went on."""

    item: int
    filename: str | None = None
    problem: Problem


class GroupExpected(BaseModel):
    """The precision to expect of a grouping (``visage.grouping.expected_precision``): its
    expected BCubed precision and the false edges each face has on average, from the calibrated
    impostor rate at the threshold and the number of faces."""

    bcubed_precision: float
    false_edges_per_face: float


class GroupOut(BaseModel):
    """Faces grouped by person (largest group first); ``messy`` holds the faces that joined no
    group of two or more (no other face of the batch within the threshold of them).
    ``expected``: the precision to expect (null for a model with no calibration)."""

    threshold: float
    threshold_source: str
    faces: int
    expected: GroupExpected | None
    groups: list[list[GroupMember]]
    messy: list[GroupMember]
    failed: list[ItemProblem]
    audit_seq: int


# ---------------------------------------------------------------- collections


class CollectionCreate(_In):
    """A new collection; ``keep_images`` stores each enrolled photo beside its template;
    ``target_fpir``: the share of strangers identify may name as someone, at any size."""

    model_config = example_config(name="staff", target_fpir=0.01)

    name: CollectionName
    keep_images: StrictBool = False
    target_fpir: float = Field(0.01, ge=FPIR_RANGE[0], le=FPIR_RANGE[1], allow_inf_nan=False)


class CollectionOut(_Out):
    """A collection and its size."""

    name: str
    model_id: str
    dim: int
    keep_images: bool
    created_at: datetime
    persons: int
    templates: int
    target_fpir: float
    open_set_source: str | None = None
    operating_point: OperatingPointOut | None = Field(
        None, description="The identify threshold in use now, and how it was derived"
    )


class CollectionList(BaseModel):
    """The collections this key may use."""

    items: list[CollectionOut]


# ---------------------------------------------------------------- persons & consent


class PersonCreate(_In):
    """A new person; ``external_id`` is your own id for them, unique in the collection."""

    model_config = example_config(
        display_name="Ada Lovelace", external_id="emp-1815", metadata={"team": "analytics"}
    )

    display_name: Name
    external_id: Name | None = None
    metadata: dict[str, Any] = {}


class PersonUpdate(_In):
    """What to change of a person; fields left out stay as they are (metadata is replaced)."""

    model_config = example_config(display_name="Ada King")

    display_name: Name | None = None
    external_id: Name | None = None
    metadata: dict[str, Any] | None = None


class ConsentCreate(_In):
    """A consent record (or another lawful basis); ``expires_at`` after ``granted_at``."""

    model_config = example_config(
        basis="consent",
        granted_by="Ada Lovelace",
        purpose="door access",
        expires_at="2027-12-31T00:00:00Z",
    )

    basis: ConsentBasis
    granted_by: Name
    purpose: Name | None = None
    granted_at: IsoTime | None = None
    expires_at: IsoTime | None = None


class RevokeIn(_In):
    """Why consent is revoked (kept in the record and the audit log)."""

    model_config = example_config(reason="asked to be removed")

    reason: Annotated[str, Field(max_length=2000)] | None = None


class ConsentOut(_Out):
    """A consent record; ``status`` is valid, pending, expired or revoked."""

    id: int
    basis: str
    purpose: str | None
    granted_by: str
    granted_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    status: str


class ConsentList(BaseModel):
    """A person's consent history, oldest first."""

    items: list[ConsentOut]


class PersonOut(_Out):
    """A person, how many templates are held for them and their consent history."""

    id: str
    collection: str
    display_name: str
    external_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    templates: int
    consent_valid: bool
    consents: list[ConsentOut]


class PersonList(BaseModel):
    """One page of persons, in creation order."""

    items: list[PersonOut]
    offset: int
    limit: int


class RemovedOut(BaseModel):
    """How many templates a deletion or revocation removed (from store and index, at once)."""

    templates_removed: int


# ---------------------------------------------------------------- enrollment


class EnrollOut(_Out):
    """An enrolled template; ``created`` is false when the same source was already enrolled."""

    person_id: str
    template_id: int
    created: bool
    quality: float | None
    source_sha256: str


class TemplateOut(_Out):
    """An enrolled face (a template); its embedding is never sent back."""

    id: int
    person_id: str
    model_id: str
    quality: float | None
    source_sha256: str
    has_image: bool
    created_at: datetime


class TemplateList(BaseModel):
    """A person's enrolled faces, oldest first."""

    items: list[TemplateOut]


class BulkItemIn(_In):
    """One template of a bulk enrollment by embedding."""

    person: Name
    embedding: Vector
    quality: Quality | None = None


class BulkIn(_In):
    """Many templates by embedding, enrolled in one transaction (all or none)."""

    model_config = example_config(
        items=[{"person": "emp-1815", "embedding": [-x for x in EXAMPLE_VECTOR], "quality": 0.8}]
    )

    items: list[BulkItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class BulkItemOut(BaseModel):
    """The outcome for one item: its template, or the problem that stopped it."""

    item: int
    filename: str | None = None
    person: str
    result: EnrollOut | None = None
    problem: Problem | None = None


class BulkOut(BaseModel):
    """Per-item results of a bulk enrollment and the counts."""

    enrolled: int
    duplicates: int
    failed: int
    items: list[BulkItemOut]


# ---------------------------------------------------------------- audit & health


class AuditEventOut(_Out):
    """One audit event; ``hash`` covers every other field, ``prev_hash`` links the chain."""

    seq: int
    at: str
    actor: str
    action: str
    collection: str | None
    purpose: str | None
    input_hash: str | None
    summary: dict[str, Any]
    prev_hash: str
    hash: str


class AuditList(BaseModel):
    """Audit events with ``seq`` after the one asked for, oldest first."""

    items: list[AuditEventOut]


class ChainOut(BaseModel):
    """The audit chain walked from the start: intact, or the first broken link and why."""

    ok: bool
    events: int
    head: str
    broken_seq: int | None
    reason: str | None
    anchored_seq: int | None = Field(
        None, description="The newest signed checkpoint checked against (none: not anchored)"
    )
    anchored_at: str | None = None
    description: str

    @classmethod
    def from_report(cls, r: ChainReport) -> ChainOut:
        return cls(
            ok=r.ok,
            events=r.events,
            head=r.head,
            broken_seq=r.broken_seq,
            reason=r.reason,
            anchored_seq=r.anchored_seq,
            anchored_at=r.anchored_at,
            description=r.describe(),
        )


class HealthOut(BaseModel):
    """Liveness or readiness, with the checks behind it."""

    status: str
    checks: dict[str, str] = {}


# ---------------------------------------------------------------- keys


class KeyCreate(_In):
    """A new API key: its name, scopes, the collections it may use (``*``: all) and, when it
    should stop working, a lifetime (``12h``, ``30d``, ``8w``)."""

    model_config = example_config(
        name="front desk", scopes=["identify"], collections=["staff"], expires_in="90d"
    )

    name: Annotated[str, Field(min_length=1, max_length=200)]
    scopes: list[Annotated[str, Field(max_length=20)]] = Field(min_length=1, max_length=4)
    collections: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        ["*"], min_length=1, max_length=100
    )
    expires_in: Annotated[str, Field(max_length=20)] | None = None


class KeyOut(_Out):
    """An API key as the server keeps it: never its secret. ``collections`` ``None``: all."""

    id: str
    name: str
    scopes: list[str]
    collections: list[str] | None
    rate_limit: float | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    devices: list[str] | None

    @classmethod
    def from_key(cls, key: Any) -> KeyOut:
        return cls(
            id=key.id,
            name=key.name,
            scopes=sorted(key.scopes),
            collections=None if key.collections is None else sorted(key.collections),
            rate_limit=key.rate_limit,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            expires_at=key.expires_at,
            devices=None if key.devices is None else sorted(key.devices),
        )


class KeyList(BaseModel):
    """Every key, oldest first, revoked ones included."""

    items: list[KeyOut]


class NewKeyOut(BaseModel):
    """A key just made; ``token`` is its secret, shown this once and stored nowhere."""

    key: KeyOut
    token: str


class EvalReportOut(BaseModel):
    """An evaluation's report: ``report`` is what ``visage eval verify --json`` prints
    (accuracy over folds, ROC AUC, EER, TAR at each target FMR, the shipped calibration on
    this data, the pairs decided wrongly) or, for ``kind`` identify, what ``visage eval identify
    --json`` prints (rank-1, rank-5, CMC, FNIR at each target FPIR, the gallery's own decision);
    ``figures`` are the PNGs' URLs."""

    kind: Literal["verify", "identify"] = Field(description="The protocol the report is of")
    created_at: datetime
    actor: str = Field(description="The key id that ran it")
    audit_seq: int = Field(
        description="The audit event the run wrote (`eval.verify` or `eval.identify`)"
    )
    figures: dict[str, str] = Field(description="Figure name to the URL of its PNG")
    report: dict[str, Any]
