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
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

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

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "key": self.key,
            "device": self.device_id,
            "track": self.track,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "detections": self.detections,
            "quality": round(self.quality, 4),
            "model_id": self.model_id,
            "embedding": base64.b64encode(
                np.ascontiguousarray(self.embedding, dtype="<f4").tobytes()
            ).decode("ascii"),
            "decision": None
            if d is None
            else {
                "person_id": d.person_id,
                "distance": None if d.distance is None else round(d.distance, 6),
                "threshold": d.threshold,
                "snapshot": d.snapshot,
            },
            "crop_jpeg": None
            if self.crop_jpeg is None
            else base64.b64encode(self.crop_jpeg).decode("ascii"),
        }

    def to_bytes(self) -> bytes:
        """The compact JSON queued and uploaded."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, dim: int) -> EdgeEvent:
        """Parse an uploaded event; :class:`InputError` saying what is wrong."""
        try:
            raw = base64.b64decode(doc["embedding"], validate=True)
            if len(raw) != 4 * dim:
                raise InputError(f"embedding has {len(raw) // 4} values; the collection uses {dim}")
            vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(vector)) or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                raise InputError("embedding is not an L2-normalised finite vector")
            crop = doc.get("crop_jpeg")
            crop_bytes = _chip_jpeg(base64.b64decode(crop, validate=True)) if crop else None
            d = doc.get("decision")
            first, last = (
                datetime.fromisoformat(doc["first_seen"]),
                datetime.fromisoformat(doc["last_seen"]),
            )
            if first.tzinfo is None or last.tzinfo is None:
                raise InputError("times must carry a time zone")
            return cls(
                key=str(doc["key"]),
                device_id=str(doc["device"]),
                track=int(doc["track"]),
                first_seen=first,
                last_seen=last,
                detections=int(doc["detections"]),
                quality=float(doc["quality"]),
                model_id=str(doc["model_id"]),
                embedding=vector,
                decision=None
                if d is None
                else DeviceDecision(
                    person_id=d["person_id"],
                    distance=None if d["distance"] is None else float(d["distance"]),
                    threshold=float(d["threshold"]),
                    snapshot=int(d["snapshot"]),
                ),
                crop_jpeg=crop_bytes,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise InputError(f"malformed edge event ({exc!s})") from None


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
