"""The export format, ``visage-collection`` version 1: JSON lines, a header then one line per
person with their consent records and templates (never images). Writing a record and reading
a file line by line live here; what an import must check lives with the gallery's rules."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError
from ..store import CollectionRow, ConsentRow, PersonRow, TemplateRow, utcnow

EXPORT_FORMAT = "visage-collection"
EXPORT_VERSION = 1
EXPORT_LINE_MAX = 64 << 20
"""Longest line (one person's record) an import reads: 64 MiB, some 90,000 templates of 128-d."""


def header(coll: CollectionRow, persons: int) -> dict[str, Any]:
    """An export's first line: the format, the collection, its model and embedding size."""
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "collection": coll.name,
        "model_id": coll.model_id,
        "dim": coll.dim,
        "persons": persons,
        "exported_at": utcnow().isoformat(),
    }


def person_record(
    prow: PersonRow, consents: Sequence[ConsentRow], templates: Sequence[TemplateRow]
) -> dict[str, Any]:
    """One person's line of an export: the person, their consent records and templates
    (embeddings base64 little-endian float32; never an image)."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "person": {
            "id": prow.id,
            "display_name": prow.display_name,
            "external_id": prow.external_id,
            "metadata": prow.meta,
            "created_at": when(prow.created_at),
        },
        "consents": [
            {
                "basis": c.basis,
                "purpose": c.purpose,
                "granted_by": c.granted_by,
                "granted_at": when(c.granted_at),
                "expires_at": when(c.expires_at),
                "revoked_at": when(c.revoked_at),
                "revoked_by": c.revoked_by,
                "revoke_reason": c.revoke_reason,
            }
            for c in consents
        ],
        "templates": [
            {
                "embedding": base64.b64encode(t.embedding).decode("ascii"),
                "model_id": t.model_id,
                "quality": t.quality,
                "source_sha256": t.source_sha256,
                "created_at": when(t.created_at),
            }
            for t in templates
        ],
    }


class ExportReader:
    """An export file read one line at a time (each at most :data:`EXPORT_LINE_MAX` bytes),
    hashing as it goes; :class:`InputError` naming the line that is not UTF-8 JSON."""

    def __init__(self, source: Path, handle: BinaryIO) -> None:
        self.source, self._handle = source, handle
        self.size = os.fstat(handle.fileno()).st_size
        self.read = 0
        self.digest = hashlib.sha256()

    @classmethod
    @contextmanager
    def open(cls, source: Path) -> Iterator[ExportReader]:
        try:
            handle = open(source, "rb")  # noqa: SIM115 - closed when the caller is done
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror or exc}") from None
        with handle:
            yield cls(source, handle)

    def records(self) -> Iterator[tuple[int, Any]]:
        """``(line number, JSON value)`` for each non-blank line; the first is the header."""
        source = self.source
        for number, line in enumerate(
            iter(partial(self._handle.readline, EXPORT_LINE_MAX + 1), b""), 1
        ):
            self.digest.update(line)
            self.read += len(line)
            if len(line) > EXPORT_LINE_MAX:
                raise InputError(f"{source} line {number}: longer than {EXPORT_LINE_MAX} bytes")
            if number > 1 and not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{source} line {number}: not UTF-8 text (byte {exc.start})"
                ) from None
            except (json.JSONDecodeError, ValueError) as exc:
                raise InputError(f"{source} line {number}: not JSON ({exc})") from None
            yield number, value


def file_sha256(source: Path) -> str:
    """The sha256 of a whole file, read in blocks; ``""`` when it cannot be read."""
    try:
        with open(source, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return ""


def _no_constant(name: str) -> Any:
    """``json.loads`` hook: NaN and Infinity are not JSON, so an export may not hold them."""
    raise ValueError(f"{name} is not a JSON number")
