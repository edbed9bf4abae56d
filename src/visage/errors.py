"""One error tree for Visage.

    VisageError
    ├── InputError                 bad input from a user: a 4xx / exit 1, never a traceback
    │   ├── InvalidImage           empty, truncated, corrupt, or not an image at all
    │   ├── ImageTooLarge          over the pixel limit (checked before decoding pixels)
    │   ├── ExtremeAspect          a strip too long for its width (checked before decoding)
    │   ├── NoFace                 no face where one was required
    │   ├── AmbiguousFace          several faces where one was required
    │   └── TooManyFaces           more faces in one photo than the per-photo limit
    ├── ModelError                 weights missing, corrupt, or a runtime unavailable
    └── StorageError               gallery store / index / audit problems
        ├── NotFound               an unknown collection, person, template or key
        ├── Conflict               the operation clashes with what is stored
        └── ConsentError           no valid consent for the requested operation

Programmer errors (wrong argument types, impossible options) stay ``TypeError`` / ``ValueError``.
"""

from __future__ import annotations

from pathlib import Path

from .names import printable


def _shown(source: str | Path | None) -> str | None:
    """The image's name as messages (and the audit) carry it: :func:`visage.names.printable`."""
    return None if source is None else printable(source)


class VisageError(Exception):
    """Base of every operational error Visage raises on purpose.

    ``audit_seq`` is the audit event that recorded this refusal, when the gallery wrote one.
    """

    audit_seq: int | None = None


class InputError(VisageError):
    """The caller's input cannot be processed; the message says why."""


class InvalidImage(InputError):
    """The bytes are not a decodable image (empty, truncated, corrupt, unsupported)."""

    def __init__(self, reason: str, *, source: str | Path | None = None) -> None:
        self.reason = reason
        self.source = _shown(source)
        where = f"{self.source}: " if self.source else ""
        super().__init__(f"{where}invalid image: {reason}")


class ImageTooLarge(InputError):
    """The image has more pixels than the configured limit (a decompression-bomb guard)."""

    def __init__(self, pixels: int, limit: int, *, source: str | Path | None = None) -> None:
        self.pixels = pixels
        self.limit = limit
        self.source = _shown(source)
        where = f"{self.source}: " if self.source else ""
        super().__init__(
            f"{where}image too large: {pixels:,} pixels exceeds the limit of {limit:,}"
        )


class ExtremeAspect(InputError):
    """The image is far longer than it is wide (or the reverse): no photo of a face, and a
    strip that would cost the detector minutes (checked from the header)."""

    def __init__(self, width: int, height: int, limit: float, *, source: str | Path | None = None) -> None:
        self.width, self.height, self.limit = width, height, limit
        where = f"{_shown(source)}: " if source is not None else ""
        super().__init__(
            f"{where}image is {width:,}x{height:,}: its sides differ by more than {limit:g} to 1"
        )


class NoFace(InputError):
    """No face was found where one was required."""


class AmbiguousFace(InputError):
    """Several faces were found where exactly one was required."""


class TooManyFaces(InputError):
    """A photo holds more faces than the per-photo limit."""

    def __init__(self, found: int, limit: int) -> None:
        self.found = found
        self.limit = limit
        super().__init__(f"{found} faces found; at most {limit} are processed per photo")


class ModelError(VisageError):
    """A model file is missing or corrupt, or a runtime cannot be loaded."""


class StorageError(VisageError):
    """The gallery's store, index or audit log refused or failed an operation."""


class NotFound(StorageError):
    """An unknown collection, person, template or key."""


class Conflict(StorageError):
    """The operation clashes with what is already stored."""


class ConsentError(StorageError):
    """The person has no valid consent for the requested operation."""
