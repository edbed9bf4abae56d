"""``/v1/edge/…``: edge devices post events and pull signed offline snapshots (``device`` scope);
admins list the devices. Every rule lives in :class:`visage.server.hub.EdgeHub`."""

from __future__ import annotations

import threading
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ...edge.events import DEVICE_ID_PATTERN, DeviceInfo, EventWire, Int32
from ..auth import Requires, ensure_speaks_for
from ..deps import AdminKey, JsonOnly, ServicesDep
from ..hub import MAX_TTL_S, DeviceRecord, EdgeHub, QueueReport
from ..keys_store import ApiKey, Scope
from ..problems import problem_responses
from ..schemas import EXAMPLE_BASE64, example_config

router = APIRouter(prefix="/v1/edge", tags=["edge"], responses=problem_responses())

DeviceKey = Annotated[ApiKey, Depends(Requires(Scope.DEVICE))]
"""A key with the ``device`` scope (or admin) that sees the collection named in the query."""

MAX_EVENTS = 500

_hub_lock = threading.Lock()


class _In(BaseModel):
    """Request bodies: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


CollectionQuery = Annotated[
    str, Query(min_length=1, max_length=200, description="The collection the device serves")
]


class DeviceIn(_In):
    id: str = Field(pattern=DEVICE_ID_PATTERN, description="The device's own stable id")
    agent_version: str = Field(min_length=1, max_length=50)


class QueueIn(_In):
    pending: Int32
    dead: Int32
    dropped: Int32


class EventsIn(_In):
    model_config = example_config(
        device={"id": "door-1", "agent_version": "0.1.0"},
        queue={"pending": 1, "dead": 0, "dropped": 0},
        events=[
            {
                "key": "door-1-000001",
                "device": "door-1",
                "track": 1,
                "first_seen": "2026-12-01T08:00:00Z",
                "last_seen": "2026-12-01T08:00:04Z",
                "detections": 40,
                "quality": 0.9,
                "model_id": "dlib_resnet_v1",
                "embedding": EXAMPLE_BASE64,
                "decision": None,
            }
        ],
    )

    device: DeviceIn
    queue: QueueIn | None = None
    events: list[EventWire] = Field(max_length=MAX_EVENTS)


class ReceiptOut(BaseModel):
    key: str
    status: Literal["stored", "duplicate", "rejected"]
    person_id: str | None = None
    reason: str | None = None


class EventsOut(BaseModel):
    receipts: list[ReceiptOut]


class PublicKeyOut(BaseModel):
    key: str = Field(
        description="ed25519:<base64 raw key>: pin it on devices (visage edge run --trust)"
    )


class SignedSnapshotOut(BaseModel):
    format: str
    version: int
    key_id: str
    payload: str = Field(description="base64 of the canonical JSON snapshot the signature covers")
    signature: str = Field(description="base64 Ed25519 signature of the payload bytes")


class DeviceList(BaseModel):
    items: list[DeviceRecord]


def get_hub(request: Request, services: ServicesDep) -> EdgeHub:
    """The app's edge hub, made on first use (it only loads the snapshot signing key)."""
    hub: EdgeHub | None = getattr(request.app.state, "edge_hub", None)
    if hub is None:
        with _hub_lock:
            hub = getattr(request.app.state, "edge_hub", None)
            if hub is None:
                hub = EdgeHub.open(services.gallery, max_ttl_s=services.settings.edge_max_ttl_s)
                request.app.state.edge_hub = hub
    return hub


HubDep = Annotated[EdgeHub, Depends(get_hub)]


@router.post("/events", response_model=EventsOut, dependencies=[JsonOnly])
def post_edge_events(
    key: DeviceKey, collection: CollectionQuery, body: EventsIn, hub: HubDep
) -> EventsOut:
    """Store a device's events, each once per idempotency key (a retry answers ``duplicate``).

    Every event is scored by the server (a device's claim verified, the others identified, both
    audited) and stored with the server's figures; a device decision is also audited as
    ``edge.identify``, flagged ``mismatch`` when it disagrees. A malformed event is
    ``rejected`` alone. A key bound to devices may post only as one of them (403).
    """
    ensure_speaks_for(key, body.device.id)
    receipts = hub.ingest(
        key_id=key.id,
        collection=collection,
        device=DeviceInfo(body.device.id, body.device.agent_version),
        events=body.events,
        queue=QueueReport(**body.queue.model_dump()) if body.queue is not None else None,
    )
    return EventsOut(receipts=[ReceiptOut(**r.__dict__) for r in receipts])


@router.get(
    "/snapshot",
    response_class=Response,
    responses={
        200: {
            "description": "The signed snapshot document",
            "content": {"application/json": {"schema": SignedSnapshotOut.model_json_schema()}},
        }
    },
)
def get_edge_snapshot(
    key: DeviceKey,
    collection: CollectionQuery,
    hub: HubDep,
    device: Annotated[str, Query(pattern=DEVICE_ID_PATTERN)],
    agent_version: Annotated[str, Query(min_length=1, max_length=50)] = "unknown",
    ttl_s: Annotated[
        int | None, Query(ge=1, le=MAX_TTL_S, description="Lifetime asked for")
    ] = None,
) -> Response:
    """The collection's consented templates (no images), signed with the server's Ed25519 key;
    ``sequence`` grows with every change, and devices refuse it once expired. A key bound to
    devices pulls only for one of them (403)."""
    ensure_speaks_for(key, device)
    document = hub.snapshot(
        key_id=key.id, collection=collection, device=DeviceInfo(device, agent_version), ttl_s=ttl_s
    )
    return Response(content=document, media_type="application/json")


@router.get("/public-key", response_model=PublicKeyOut)
def get_edge_public_key(key: DeviceKey, hub: HubDep) -> PublicKeyOut:
    """The key snapshots are signed with (devices that were not given one pin this on first use)."""
    return PublicKeyOut(key=hub.public_key())


@router.get("/devices", response_model=DeviceList)
def list_edge_devices(key: AdminKey, hub: HubDep) -> DeviceList:
    """Devices that have posted events or pulled snapshots, most recently seen first, with
    their agent version and last contact (only the collections the key sees)."""
    return DeviceList(items=hub.devices(key.collections))
