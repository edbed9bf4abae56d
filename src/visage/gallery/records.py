"""The records the gallery hands out: frozen dataclasses, no ORM objects past the service."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..decision import OpenSetPoint
from ..errors import InputError


class ConsentBasis(StrEnum):
    """The lawful basis a template is held on (GDPR art. 6 vocabulary)."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal-obligation"
    VITAL_INTERESTS = "vital-interests"
    PUBLIC_TASK = "public-task"
    LEGITIMATE_INTERESTS = "legitimate-interests"

    @classmethod
    def parse(cls, text: str) -> ConsentBasis:
        """The basis named ``text``; :class:`InputError` listing the choices otherwise."""
        try:
            return cls(text)
        except ValueError:
            allowed = ", ".join(b.value for b in cls)
            raise InputError(f"unknown consent basis {text!r}; one of: {allowed}") from None


COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""A collection name: letters, digits, '.', '_' and '-', starting with a letter or digit. The
service, the HTTP schemas, the API key store and the CLI all use this one rule, so every
collection that can be created can be named in a key's scope (no spaces, commas or '*')."""
COLLECTION_NAME_MAX = 200
"""The longest collection name, in characters."""
_COLLECTION_NAME = re.compile(COLLECTION_NAME_PATTERN)


def collection_name(name: str) -> str:
    """``name`` when it matches :data:`COLLECTION_NAME_PATTERN` and is at most
    :data:`COLLECTION_NAME_MAX` characters long; else :class:`InputError` saying what is allowed."""
    if (
        not isinstance(name, str)
        or len(name) > COLLECTION_NAME_MAX
        or not _COLLECTION_NAME.fullmatch(name)
    ):
        raise InputError(
            f"invalid collection name {name!r}: 1 to {COLLECTION_NAME_MAX} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class CollectionInfo:
    """A collection: its embedding model and size, how many persons and templates it holds, and
    the false-positive identification rate its identify answers hold (``target_fpir``)."""

    name: str
    model_id: str
    dim: int
    keep_images: bool
    created_at: datetime
    persons: int
    templates: int
    target_fpir: float
    open_set_source: str | None = None
    """What the collection's own open-set calibration was measured on (``None``: the model's
    shipped one, docs/accuracy.md)."""


@dataclass(frozen=True)
class ConsentInfo:
    """One consent record; ``status`` is ``valid``, ``pending``, ``expired`` or ``revoked``."""

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


def person_text(label: str, value: str) -> str:
    """A person's display name or external id, NFC-normalised; :class:`InputError` when empty
    or holding a control or format character (Unicode Cc, Cf: NUL, bidi overrides, zero-width
    joiners) or a separator other than a plain space (line breaks, no-break and ideographic
    spaces), which would let two names that look alike differ, or hide text."""
    if not isinstance(value, str):
        raise InputError(f"{label} must be text")
    text = unicodedata.normalize("NFC", value)
    if not text.strip():
        raise InputError(f"{label} must not be empty")
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf") or (category.startswith("Z") and char != " "):
            name = unicodedata.name(char, "a control character")
            raise InputError(
                f"{label} holds U+{ord(char):04X} ({name}); control, format and separator "
                "characters other than a plain space are not allowed"
            )
    return text


@dataclass(frozen=True)
class PersonInfo:
    """A person, the number of templates held for them and their consent history (oldest first)."""

    id: str
    collection: str
    display_name: str
    external_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    templates: int
    consents: tuple[ConsentInfo, ...]

    @property
    def consent_valid(self) -> bool:
        """True when some consent record is valid now (the person may be enrolled and found)."""
        return any(c.status == "valid" for c in self.consents)


@dataclass(frozen=True)
class ConsentedPerson:
    """A person whose consent is valid, with their templates of the collection's model."""

    person: PersonInfo
    embeddings: npt.NDArray[np.float32]
    """``(templates, dim)``, the stored (unit) vectors, oldest first."""


@dataclass(frozen=True)
class ConsentedTemplates:
    """What a collection can match, read in one snapshot: its consented persons with their
    templates, and the store ``version`` the read saw (it moves with every change to the
    collection, so two reads at one version hold the same persons)."""

    collection: CollectionInfo
    version: int
    persons: tuple[ConsentedPerson, ...]
    open_set: str | None = None
    """The collection's own open-set calibration (JSON), for offline decisions by its rule."""


@dataclass(frozen=True)
class EmbeddingItem:
    """One template to enroll from an embedding: the person (id or external id) and the vector.

    ``source_sha256`` identifies the source (a photo's hash); when absent the embedding's own
    hash is used, so enrolling the same vector twice is idempotent either way.
    """

    person: str
    embedding: npt.NDArray[np.float32]
    quality: float | None = None
    source_sha256: str | None = None


@dataclass(frozen=True)
class EnrollResult:
    """An enrolled template; ``created`` is False when the same source was already enrolled."""

    person_id: str
    template_id: int
    created: bool
    quality: float | None
    source_sha256: str


@dataclass(frozen=True)
class TemplateInfo:
    """A stored template (never its embedding): where it came from, its quality, when."""

    id: int
    person_id: str
    model_id: str
    quality: float | None
    source_sha256: str
    has_image: bool
    created_at: datetime


@dataclass(frozen=True)
class KeptImage:
    """The photo a template was enrolled from, as sent, kept by a ``keep_images`` collection."""

    data: bytes
    media_type: str


@dataclass(frozen=True)
class Candidate:
    """A person returned by identify, scored by their best (nearest) template."""

    person_id: str
    display_name: str
    external_id: str | None
    distance: float
    same: bool
    template_id: int


@dataclass(frozen=True)
class Identification:
    """Ranked candidates (nearest first) and the open-set answer.

    ``unknown`` is True when no candidate is within ``threshold`` — the probe is nobody in the
    collection as far as the calibration can tell. ``operating_point`` says which target FPIR
    and gallery size that threshold holds. ``audit_seq`` is the audit event written.
    """

    candidates: tuple[Candidate, ...]
    unknown: bool
    threshold: float
    threshold_source: str
    audit_seq: int
    operating_point: OpenSetPoint

    @property
    def best(self) -> Candidate | None:
        """The nearest candidate when it is within the threshold, else ``None``."""
        return None if self.unknown else self.candidates[0]


@dataclass(frozen=True)
class Verification:
    """A 1:1 answer: the distance to the person's best template and the decision, with the FMR
    its threshold was chosen for and the FNMR the calibration measured there."""

    person_id: str
    distance: float
    same: bool
    threshold: float
    threshold_source: str
    template_id: int
    audit_seq: int
    target_fmr: float | None = None
    expected_fnmr: float | None = None


@dataclass(frozen=True)
class SimilarFace:
    """A template near the probe (find-similar is a search, not a decision: no threshold)."""

    template_id: int
    person_id: str
    display_name: str
    distance: float


@dataclass(frozen=True)
class TransferSummary:
    """What an export or import moved; ``sha256`` is the file's hash (also in the audit log).

    ``rekeyed``: imported persons whose id was taken in the store and were given a new one.
    """

    collection: str
    path: Path
    persons: int
    templates: int
    sha256: str
    renamed_from: str | None = None
    rekeyed: int = 0
