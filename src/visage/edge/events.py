"""What an edge device reports for each track — the only thing that leaves it by default.

An :class:`EdgeEvent` carries times, quality, the track's embedding and the device's own
decision (from its offline snapshot, when it had one); never an image, unless the operator
turned crops on (then the best aligned 150x150 chip as JPEG). Its ``key`` is the idempotency
key, drawn once when the track closes and kept through every retry, so the server stores it
once however many times it is sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..align import CHIP_SIZE
from ..errors import InputError
from ..imageio import decode

MAX_CROP_BYTES = 64 * 1024
JPEG_MAGIC = b"\xff\xd8\xff"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"
"""What a device id may be, on the device and on the server (``/v1/edge/…`` validates with it)."""


def check_device_id(value: str) -> str:
    """``value`` when it is a valid device id; :class:`InputError` saying the rule otherwise.

    An agent checks its id before it queues anything: the server refuses every event from an
    invalid id, so an agent that did not check would queue events that can only die.
    """
    if not re.fullmatch(DEVICE_ID_PATTERN, value):
        raise InputError(
            f"invalid device id {value!r}: 1-100 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class DeviceInfo:
    """Who is sending: the device's stable id (checked by :func:`check_device_id`) and its
    agent version."""

    id: str
    agent_version: str

    def __post_init__(self) -> None:
        check_device_id(self.id)


@dataclass(frozen=True)
class DeviceDecision:
    """The device's answer from snapshot ``snapshot`` (its sequence): ``person_id`` or unknown."""

    person_id: str | None
    distance: float | None
    threshold: float
    snapshot: int

    @property
    def unknown(self) -> bool:
        return self.person_id is None


MAX_DIM = 4096
"""Longest embedding an event may carry (the collection's ``dim`` decides what it must be)."""

Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]


def _utc(value: datetime) -> datetime:
    """Aware times, normalised to UTC (a time that cannot be expressed in UTC is refused)."""
    if value.tzinfo is None:
        raise ValueError("a time zone is required")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range") from None


UtcTime = Annotated[datetime, AfterValidator(_utc)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecisionWire(_Wire):
    """A device decision on the wire."""

    person_id: str | None = Field(None, min_length=1, max_length=32)
    distance: Finite | None = None
    threshold: Finite
    snapshot: Int32


class EventWire(_Wire):
    """An :class:`EdgeEvent` on the wire: what the agent queues and uploads and what
    ``POST /v1/edge/events`` validates (one schema for both ends)."""

    key: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Idempotency key: the same event of a device is stored once",
    )
    device: str = Field(pattern=DEVICE_ID_PATTERN)
    track: Int32
    first_seen: UtcTime
    last_seen: UtcTime
    detections: Int32
    quality: float = Field(ge=0, le=1, allow_inf_nan=False)
    model_id: str = Field(min_length=1, max_length=100)
    embedding: str = Field(
        min_length=1,
        max_length=(4 * MAX_DIM * 4) // 3 + 4,
        description="base64 of little-endian float32, L2-normalised",
    )
    decision: DecisionWire | None = None
    crop_jpeg: str | None = Field(
        None,
        max_length=90_000,
        description="base64 JPEG of the 150x150 face chip (sent only when the operator enabled "
        "crops); kept only in a keep_images collection for an identified person with valid "
        "consent",
    )


@dataclass(frozen=True)
class EdgeEvent:
    """One closed track as reported by a device. ``embedding`` ``(dim,) float32`` L2-normalised."""

    key: str
    device_id: str
    track: int
    first_seen: datetime
    last_seen: datetime
    detections: int
    quality: float
    model_id: str
    embedding: npt.NDArray[np.float32]
    decision: DeviceDecision | None = None
    crop_jpeg: bytes | None = None

    @property
    def stranger(self) -> bool:
        """The device's snapshot matched this track to nobody (no snapshot: not known)."""
        return self.decision is not None and self.decision.unknown

    @property
    def embedding_sha256(self) -> str:
        """The hash the audit log records for this probe (the probe itself is never stored)."""
        return hashlib.sha256(
            np.ascontiguousarray(self.embedding, dtype="<f4").tobytes()
        ).hexdigest()

    def to_wire(self) -> EventWire:
        """This event as it travels (quality to 4 places, distances to 6)."""
        d = self.decision
        return EventWire(
            key=self.key,
            device=self.device_id,
            track=self.track,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            detections=self.detections,
            quality=round(self.quality, 4),
            model_id=self.model_id,
            embedding=base64.b64encode(
                np.ascontiguousarray(self.embedding, dtype="<f4").tobytes()
            ).decode("ascii"),
            decision=None
            if d is None
            else DecisionWire(
                person_id=d.person_id,
                distance=None if d.distance is None else round(d.distance, 6),
                threshold=d.threshold,
                snapshot=d.snapshot,
            ),
            crop_jpeg=None
            if self.crop_jpeg is None
            else base64.b64encode(self.crop_jpeg).decode("ascii"),
        )

    def to_json(self) -> dict[str, Any]:
        return self.to_wire().model_dump(mode="json")

    def to_bytes(self) -> bytes:
        """The compact JSON queued and uploaded."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, dim: int) -> EdgeEvent:
        """Parse an event as the agent queued it; :class:`InputError` saying what is wrong."""
        try:
            wire = EventWire.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(f"malformed edge event ({where}: {first['msg']})") from None
        return cls.from_wire(wire, dim=dim)

    @classmethod
    def from_wire(cls, wire: EventWire, *, dim: int) -> EdgeEvent:
        """The event a checked wire form carries, for a collection of ``dim``; :class:`InputError`
        for an embedding of another size, not unit length, or a crop that is not a face chip."""
        try:
            raw = base64.b64decode(wire.embedding, validate=True)
            crop = base64.b64decode(wire.crop_jpeg, validate=True) if wire.crop_jpeg else None
        except (ValueError, binascii.Error) as exc:
            raise InputError(f"malformed edge event ({exc!s})") from None
        if len(raw) != 4 * dim:
            raise InputError(f"embedding has {len(raw) // 4} values; the collection uses {dim}")
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(vector)) or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
            raise InputError("embedding is not an L2-normalised finite vector")
        d = wire.decision
        return cls(
            key=wire.key,
            device_id=wire.device,
            track=wire.track,
            first_seen=wire.first_seen,
            last_seen=wire.last_seen,
            detections=wire.detections,
            quality=wire.quality,
            model_id=wire.model_id,
            embedding=vector,
            decision=None
            if d is None
            else DeviceDecision(d.person_id, d.distance, d.threshold, d.snapshot),
            crop_jpeg=_chip_jpeg(crop) if crop is not None else None,
        )


def _chip_jpeg(data: bytes) -> bytes:
    """``data`` when it is what an agent sends: a JPEG of one aligned chip, ``CHIP_SIZE``
    pixels square, at most :data:`MAX_CROP_BYTES`; :class:`InputError` for anything else (a
    whole photo, another format, a truncated file)."""
    if len(data) > MAX_CROP_BYTES:
        raise InputError(f"crop exceeds {MAX_CROP_BYTES} bytes")
    if not data.startswith(JPEG_MAGIC):
        raise InputError("crop is not a JPEG")
    pixels = decode(data, max_pixels=CHIP_SIZE * CHIP_SIZE, source="crop")
    if pixels.shape[:2] != (CHIP_SIZE, CHIP_SIZE):
        height, width = pixels.shape[:2]
        raise InputError(f"crop is {width}x{height}; a face chip is {CHIP_SIZE}x{CHIP_SIZE}")
    return data


@dataclass(frozen=True)
class Receipt:
    """The server's answer for one event: ``stored`` now, a ``duplicate`` of one stored
    before, or ``rejected`` with ``reason`` (never worth retrying). ``person_id`` is the identity
    the server recorded (the device's decision, or its own identify)."""

    key: str
    status: str
    person_id: str | None = None
    reason: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status in ("stored", "duplicate")
