"""The gallery: collections of consented persons, their templates, decisions, and the audit log.

    >>> from visage.gallery import Gallery
    >>> with Gallery("gallery.db") as g:
    ...     g.create_collection("staff")
    ...     p = g.add_person("staff", "Ada", external_id="E-17")
    ...     g.grant_consent("staff", p.id, basis="consent", granted_by="Ada")
    ...     g.enroll("staff", p.id, "ada.jpg")
    ...     g.identify("staff", "door-camera.jpg").best
"""

from __future__ import annotations

from ..store.audit import AuditEvent, ChainReport
from .index import ExactIndex, FaissIndex, IndexSpec, VectorIndex, make_index
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
)
from .service import Gallery, PoorQuality

__all__ = [
    "AuditEvent",
    "Candidate",
    "ChainReport",
    "CollectionInfo",
    "ConsentBasis",
    "ConsentInfo",
    "ConsentedPerson",
    "ConsentedTemplates",
    "EmbeddingItem",
    "EnrollResult",
    "ExactIndex",
    "FaissIndex",
    "Gallery",
    "Identification",
    "IndexSpec",
    "KeptImage",
    "PersonInfo",
    "PoorQuality",
    "SimilarFace",
    "TemplateInfo",
    "TransferSummary",
    "VectorIndex",
    "Verification",
    "make_index",
]
