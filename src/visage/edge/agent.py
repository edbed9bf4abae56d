"""The edge agent: frames → detect → track → identify offline → durable queue → server.

    agent = Agent(AgentConfig("door", Path("/var/lib/visage-edge")), Pipeline(upsample=0),
                  HttpUplink("https://visage.example", key))
    agent.run(VideoSource(0, every=3))          # a camera, until stopped

What leaves the device is one :class:`~visage.edge.events.EdgeEvent` per track: times,
quality, embedding, and the device's decision. No image leaves it unless ``send_crops`` is
set, and then only the best aligned face chip of each track.

- **Durable first.** Each event is committed to the SQLite queue before any upload is tried;
  a sync thread uploads in the background (:mod:`visage.edge.sync`). Killed at any moment, the
  agent loses no committed event and a restart resumes delivery.
- **Offline identification.** With a snapshot (``visage edge pull``, refreshed while idle
  every ``snapshot_refresh_s``) the device decides who each track is with no link. The
  snapshot is verified with the server's key — given with ``trust`` or pinned on first use —
  before every use, so a tampered, replayed or expired one is never used; without a usable
  snapshot the event carries no decision and the server identifies it. The device uses a
  snapshot at most ``snapshot_ttl_s`` after it received it, whatever the document says, and
  refuses another gallery under the sequence it already holds
  (:func:`~visage.edge.snapshot.admit`).
- **Bounded.** One frame in memory at a time, at most ``max_tracks`` open tracks with a few
  chips each, a queue capped on disk with a stated full policy (:mod:`visage.edge.queue`).
- **Keeps little.** A track the snapshot matches to nobody (a stranger) is not queued unless
  the operator set ``queue_strangers_s``, and then its event is deleted after that long if it
  was not delivered; events the server refused are kept ``dead_retention_s``; a saved snapshot
  found expired is deleted; the folder and its files are owner-only (0700, 0600). The device
  id is checked by the server's rule before anything is queued.
- **Pinned only once verified.** Trust on first use pins the server's key only after a
  snapshot has verified under it, so a first answer of garbage with an impostor's key pins
  nothing.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from PIL import Image as PILImage

from .. import __version__
from ..errors import VisageError
from ..pipeline import Pipeline
from ..signing import parse_public_key
from ..store import open_private
from .events import DeviceDecision, DeviceInfo, EdgeEvent, check_device_id
from .files import private_file
from .queue import EventQueue, QueueLimits, QueueStats
from .snapshot import (
    DEFAULT_TTL_S,
    HeldSnapshot,
    OfflineGallery,
    Snapshot,
    SnapshotRefused,
    admit,
    delete_if_expired,
    verify_snapshot,
)
from .sync import Backoff, Syncer, SyncReport, Uplink
from .timeline import TimelineEntry, VideoProcessor
from .tracker import TrackerConfig
from .video import Frame

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"
QUEUE_FILE = "queue.db"
HELD_META = "snapshot_held"
"""Queue meta key of the :class:`~visage.edge.snapshot.HeldSnapshot` record (JSON)."""


@dataclass(frozen=True)
class AgentConfig:
    """How an agent runs. ``state_dir`` holds its queue, device id, pinned key and snapshot.

    ``trust``: the server's snapshot key (``ed25519:…``); ``None`` pins the server's key on
    first use (once a snapshot verifies under it). ``drain_s``: after a finite source ends, how
    long to keep uploading before exiting (what is left stays queued for the next run).
    ``queue_strangers_s``: ``None`` (default), a track the snapshot matches to nobody is not
    queued; seconds, it is queued and deleted that long after if not delivered by then.
    ``snapshot_ttl_s``: the snapshot lifetime asked of the server and the longest the agent
    uses one after receiving it, whatever the document says (``None``: the server's default,
    used at most :data:`~visage.edge.snapshot.DEFAULT_TTL_S`, 24 h).
    """

    collection: str
    state_dir: Path
    send_crops: bool = False
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    queue: QueueLimits = field(default_factory=QueueLimits)
    batch_size: int = 50
    backoff: Backoff = field(default_factory=Backoff)
    snapshot_refresh_s: float = 600.0
    snapshot_ttl_s: int | None = None
    trust: str | None = None
    drain_s: float = 30.0
    queue_strangers_s: float | None = None

    def __post_init__(self) -> None:
        if self.queue_strangers_s is not None and not self.queue_strangers_s > 0:
            raise ValueError("queue_strangers_s must be positive (or None: strangers not queued)")
        if self.snapshot_ttl_s is not None and not self.snapshot_ttl_s > 0:
            raise ValueError("snapshot_ttl_s must be positive (or None: the server's default)")

    @property
    def snapshot_life_s(self) -> int:
        """The longest the agent uses a snapshot after receiving it."""
        return self.snapshot_ttl_s if self.snapshot_ttl_s is not None else DEFAULT_TTL_S


@dataclass(frozen=True)
class AgentReport:
    """One run: frames processed, faces detected, tracks reported (``identified`` on the
    device; ``strangers`` matched to nobody by the snapshot, of which ``strangers_kept``
    queued), embeddings computed, processing seconds, and where delivery stands."""

    frames: int
    faces: int
    tracks: int
    identified: int
    strangers: int
    strangers_kept: int
    embeddings: int
    seconds: float
    sync: SyncReport
    queue: QueueStats


class Agent:
    """One device's agent for one collection. Use as a context manager (closes the queue)."""

    def __init__(
        self,
        config: AgentConfig,
        pipeline: Pipeline | None,
        uplink: Uplink,
        *,
        device_id: str | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.uplink = uplink
        if device_id is not None:
            check_device_id(device_id)  # before the queue: a refused id leaves no folder behind
        self.queue = EventQueue(config.state_dir / QUEUE_FILE, config.queue)  # makes the folder
        try:
            self.device = DeviceInfo(self._device_id(device_id), __version__)
        except VisageError:
            self.queue.close()
            raise
        self._snapshot_path = config.state_dir / SNAPSHOT_FILE
        self._snapshot_lock = threading.Lock()
        self.syncer = Syncer(
            self.queue,
            uplink,
            config.collection,
            self.device,
            batch_size=config.batch_size,
            backoff=config.backoff,
        )
        self._offline = self._load_snapshot()
        self._refreshed_at = time.monotonic() if self._offline is not None else -float("inf")

    def close(self) -> None:
        self.queue.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _device_id(self, given: str | None) -> str:
        """The id given, else the one stored with the queue, else a new one (stored); checked
        by the server's rule, so that no event is queued under an id the server refuses."""
        stored = self.queue.get_meta("device_id")
        chosen = check_device_id(given or stored or f"dev-{uuid.uuid4().hex[:16]}")
        if chosen != stored:
            self.queue.set_meta("device_id", chosen)
        return chosen

    # ------------------------------------------------------------------ snapshots

    @property
    def snapshot(self) -> Snapshot | None:
        """The offline snapshot in use, if any."""
        return self._offline.snapshot if self._offline is not None else None

    def _known_key(self) -> Ed25519PublicKey | None:
        """The configured key (recorded as pinned), else the pinned one, else ``None``."""
        pinned = self.queue.get_meta("trusted_key")
        if self.config.trust is not None:
            key = parse_public_key(self.config.trust)
            if pinned != self.config.trust.strip():
                self.queue.set_meta("trusted_key", self.config.trust.strip())
            return key
        return parse_public_key(pinned) if pinned is not None else None

    def pull_snapshot(self) -> Snapshot:
        """Fetch, verify and install the server's snapshot; :class:`SnapshotRefused` if bad.

        Verified and admitted (:func:`~visage.edge.snapshot.admit`: the agent's own lifetime,
        one gallery per sequence) before it is saved: a refused snapshot never replaces the one
        in use. With no known key the server's is fetched and pinned only once this snapshot
        verifies under it (trust on first use), so an answer that does not verify pins nothing.
        """
        document = self.uplink.fetch_snapshot(
            self.config.collection, self.device, ttl_s=self.config.snapshot_ttl_s
        )
        known = self._known_key()
        offered = self.uplink.public_key() if known is None else None
        trusted = known or parse_public_key(str(offered))
        snapshot, held = self._admit(document, trusted)
        if offered is not None:
            self.queue.set_meta("trusted_key", offered.strip())
            log.warning(
                "pinned the server's snapshot key %s on first use; pass --trust to set it",
                offered,
            )
        self._save_snapshot(document)
        self.queue.set_meta(
            "snapshot_sequence", str(snapshot.sequence), **{HELD_META: held.to_json()}
        )
        self._offline = OfflineGallery(snapshot)
        self._refreshed_at = time.monotonic()
        log.info(
            "offline snapshot %d of %r: %d persons, %d templates, expires %s",
            snapshot.sequence,
            snapshot.collection,
            len(snapshot.persons),
            snapshot.templates,
            snapshot.expires_at.isoformat(),
        )
        return snapshot

    def _min_sequence(self) -> int:
        return int(self.queue.get_meta("snapshot_sequence") or 0)

    def _held(self) -> HeldSnapshot | None:
        text = self.queue.get_meta(HELD_META)
        return HeldSnapshot.from_json(text) if text is not None else None

    def _admit(self, document: bytes, trusted: Ed25519PublicKey) -> tuple[Snapshot, HeldSnapshot]:
        """The snapshot in ``document`` as this agent may use it, and the record to keep."""
        snapshot = verify_snapshot(
            document,
            trusted,
            min_sequence=self._min_sequence(),
            collection=self.config.collection,
        )
        return admit(snapshot, self._held(), life_s=self.config.snapshot_life_s)

    def _save_snapshot(self, document: bytes) -> None:
        """Write ``document`` as the saved snapshot: owner-only, fsynced, renamed into place."""
        tmp = self._snapshot_path.with_name(SNAPSHOT_FILE + ".tmp")
        with self._snapshot_lock:
            with open_private(tmp) as fh:
                fh.write(document)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._snapshot_path)

    def _delete_if_expired(self) -> None:
        """Delete the saved snapshot (names, templates) once it has expired, by its document
        or by the agent's own lifetime."""
        held = self._held()
        own = held.expires_at(self.config.snapshot_life_s) if held is not None else None
        with self._snapshot_lock:
            if delete_if_expired(self._snapshot_path, not_after=own):
                log.warning("deleted the expired offline snapshot %s", self._snapshot_path)

    def _load_snapshot(self) -> OfflineGallery | None:
        """The saved snapshot when it still verifies and is admitted (signature, expiry by the
        document and by the agent's lifetime since it was received, sequence), else None; an
        expired one is deleted. One saved with no record of its receipt (by an agent before
        that record) is not used: the next pull replaces it."""
        path = self._snapshot_path
        private_file(path)
        self._delete_if_expired()
        trusted = self._known_key()
        if trusted is None or not path.exists():
            return None
        if self._held() is None:
            log.warning("saved snapshot not used: no record of when it was received")
            return None
        try:
            return OfflineGallery(self._admit(path.read_bytes(), trusted)[0])
        except SnapshotRefused as exc:
            log.warning("saved snapshot not used: %s", exc)
            return None

    def _refresh_if_due(self) -> None:
        """Pull a new snapshot when the last is older than ``snapshot_refresh_s`` (sync thread)."""
        if time.monotonic() - self._refreshed_at < self.config.snapshot_refresh_s:
            return
        self._refreshed_at = time.monotonic()
        try:
            self.pull_snapshot()
        except VisageError as exc:
            log.warning("snapshot refresh failed: %s", exc)

    # ------------------------------------------------------------------ events

    def decide(self, embedding: npt.NDArray[np.float32]) -> DeviceDecision | None:
        """The device's decision from its snapshot, or ``None`` with no usable snapshot."""
        offline = self._offline
        if offline is None:
            return None
        try:
            identity = offline.identify(embedding, k=1)
        except SnapshotRefused as exc:
            log.warning("offline identification stopped: %s", exc)
            self._offline = None
            self._delete_if_expired()
            return None
        nearest = identity.candidates[0] if identity.candidates else None
        best = identity.best
        return DeviceDecision(
            person_id=best.person_id if best is not None else None,
            distance=nearest.distance if nearest is not None else None,
            threshold=identity.threshold,
            snapshot=offline.snapshot.sequence,
        )

    def record(self, entry: TimelineEntry, started: datetime) -> tuple[EdgeEvent, bool]:
        """Turn a closed track into an event and commit it to the queue (before any upload);
        returns the event and whether it was queued.

        A stranger's event (the snapshot matched nobody) is queued only when the operator set
        ``queue_strangers_s``, and then expires after that long.
        """
        track = entry.track
        if self.pipeline is None:
            raise ValueError("an agent that records tracks needs a pipeline")
        event = EdgeEvent(
            key=uuid.uuid4().hex,
            device_id=self.device.id,
            track=track.id,
            first_seen=started + timedelta(seconds=track.first_s),
            last_seen=started + timedelta(seconds=track.last_s),
            detections=track.detections,
            quality=track.best.quality,
            model_id=self.pipeline.model_id,
            embedding=track.embedding,
            decision=self.decide(track.embedding),
            crop_jpeg=_jpeg(track.best.chip) if self.config.send_crops else None,
        )
        keep_for = self.config.queue_strangers_s
        if event.stranger and keep_for is None:
            return event, False
        expires_at = time.time() + keep_for if event.stranger and keep_for is not None else None
        self.queue.put(event.key, event.to_bytes(), expires_at=expires_at)
        return event, True

    # ------------------------------------------------------------------ running

    def run(
        self, frames: Iterable[Frame] | None, *, stop: threading.Event | None = None
    ) -> AgentReport:
        """Process ``frames`` (``None``: only deliver what is queued) until they end or ``stop``
        is set, uploading in the background; then keep uploading for up to ``drain_s``."""
        stop = stop or threading.Event()
        started_wall, started = datetime.now(UTC), time.perf_counter()
        if frames is not None:
            self._refresh_if_due()  # identify offline from the first track when the link is up
        stop_sync, wake = threading.Event(), threading.Event()
        sync_thread = threading.Thread(
            target=self.syncer.run,
            name="visage-edge-sync",
            daemon=True,
            kwargs={"stop": stop_sync, "wake": wake, "on_idle": self._refresh_if_due},
        )
        sync_thread.start()
        processor = None
        tracks = identified = strangers = kept = 0
        try:
            if frames is not None:
                if self.pipeline is None:
                    raise ValueError("an agent that processes frames needs a pipeline")
                processor = VideoProcessor(self.pipeline, tracker=self.config.tracker)
                for entry in processor.run(_until(frames, stop)):
                    event, queued = self.record(entry, started_wall)
                    tracks += 1
                    identified += event.decision is not None and not event.stranger
                    strangers += event.stranger
                    kept += event.stranger and queued
                    wake.set()
            deadline = time.monotonic() + self.config.drain_s
            while self.queue.stats().pending and time.monotonic() < deadline and not stop.is_set():
                wake.set()
                stop.wait(0.1)
        finally:
            stop_sync.set()
            wake.set()
            sync_thread.join()
        return AgentReport(
            frames=processor.frames if processor else 0,
            faces=processor.faces if processor else 0,
            tracks=tracks,
            identified=identified,
            strangers=strangers,
            strangers_kept=kept,
            embeddings=processor.embeddings if processor else 0,
            seconds=time.perf_counter() - started,
            sync=self.syncer.report(),
            queue=self.queue.stats(),
        )


def _until(frames: Iterable[Frame], stop: threading.Event) -> Iterable[Frame]:
    for frame in frames:
        if stop.is_set():
            return
        yield frame


def _jpeg(chip: npt.NDArray[np.uint8]) -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(chip).save(out, format="JPEG", quality=85)
    return out.getvalue()
