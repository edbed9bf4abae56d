"""``visage video FILE`` and ``visage edge run | pull | status | purge | keygen``: shells over
:mod:`visage.edge` (tracking, the agent, snapshots); every rule lives there."""

from __future__ import annotations

import json
import logging
import signal
import threading
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ..errors import InputError
from ..names import printable
from .app import app
from .options import DetectorOpt, JsonOpt, console, emit_json, err_console
from .options import table as new_table

if TYPE_CHECKING:  # the edge code is imported where used, so `visage --help` stays fast
    from ..edge.agent import AgentReport
    from ..edge.identity import Identifier
    from ..edge.timeline import Timeline

edge_app = typer.Typer(
    help="The edge agent: process cameras and videos on this device, sync "
    "with a server, identify offline.",
    no_args_is_help=True,
)
app.add_typer(edge_app, name="edge")

DEFAULT_STATE = Path("~/.local/share/visage/edge")

EveryOpt = Annotated[int, typer.Option("--every", min=1, help="Detect on one frame in N.")]
EdgeUpsampleOpt = Annotated[
    int,
    typer.Option(
        "--upsample",
        min=0,
        max=4,
        help="Upsample frames N times before detection (0 finds faces from ~80 px).",
    ),
]
ServerOpt = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="VISAGE_EDGE_SERVER",
        show_envvar=True,
        help="The Visage server's base URL.",
    ),
]
KeyOpt = Annotated[
    str,
    typer.Option(
        "--key",
        envvar="VISAGE_EDGE_KEY",
        show_envvar=True,
        help="A device key (visage keys create --scopes device).",
    ),
]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="The collection served.")]
StateOpt = Annotated[
    Path,
    typer.Option("--state", help="The agent's folder: queue, device id, pinned key, snapshot."),
]
WhenFull = Literal["drop-oldest", "refuse-new"]
"""The values of :class:`visage.edge.queue.FullPolicy`, spelt out so that the option is declared
without importing the edge code (a test keeps the two equal)."""
TrustOpt = Annotated[
    str | None,
    typer.Option(
        "--trust",
        envvar="VISAGE_EDGE_TRUST",
        help="The server's snapshot key (ed25519:…, from visage edge keygen); "
        "default: pinned on first use.",
    ),
]


def _state(path: Path) -> Path:
    return path.expanduser()


def _trust_text(value: str | None) -> str | None:
    """The key itself, or read from a file that holds it."""
    if value is None or value.startswith("ed25519:"):
        return value
    try:
        return Path(value).read_text("utf-8").strip()
    except OSError as exc:
        raise InputError(f"--trust: neither a key nor a readable file ({exc.strerror})") from None


# ---------------------------------------------------------------------- visage video


@app.command()
def video(
    source: Annotated[
        str, typer.Argument(help="A video file, a camera index (0) or a stream URL.")
    ],
    every: EveryOpt = 1,
    detector: DetectorOpt = "hog",
    upsample: EdgeUpsampleOpt = 0,
    collection: Annotated[
        str | None,
        typer.Option(
            "--collection",
            "-c",
            help="Identify tracks against this collection of the local gallery.",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", envvar="VISAGE_DB", help="The local gallery store (with --collection)."
        ),
    ] = None,
    snapshot: Annotated[
        Path | None,
        typer.Option(
            "--snapshot",
            dir_okay=False,
            help="Identify against a signed offline snapshot (needs --trust).",
        ),
    ] = None,
    trust: TrustOpt = None,
    annotate: Annotated[
        Path | None,
        typer.Option(
            "--annotate",
            dir_okay=False,
            help="Also write a copy with boxes and names (.mp4 or .avi).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", dir_okay=False, help="Write the timeline JSON to this file."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Track the faces of a video: one track per person in view, with times and best frame.

    With --collection (local gallery) or --snapshot (signed, offline) each track is identified.
    """
    from ..api import pipeline as get_pipeline
    from ..edge.identity import GalleryIdentifier
    from ..edge.snapshot import OfflineGallery, verify_snapshot
    from ..edge.timeline import annotate_video, process_video
    from ..edge.tracker import TrackerConfig
    from ..edge.video import VideoSource
    from ..gallery import Gallery
    from ..signing import parse_public_key

    if collection is not None and snapshot is not None:
        raise InputError("use --collection or --snapshot, not both")
    pipe = get_pipeline(detector, upsample)
    with ExitStack() as stack:
        identifier: Identifier | None = None
        if collection is not None:
            gallery = stack.enter_context(Gallery(db, pipeline=pipe, actor="cli:video"))
            identifier = GalleryIdentifier(gallery, collection, purpose=f"video {source}")
        elif snapshot is not None:
            key = _trust_text(trust)
            if key is None:
                raise InputError("--snapshot needs --trust with the server's key")
            identifier = OfflineGallery(
                verify_snapshot(snapshot.read_bytes(), parse_public_key(key))
            )
        timeline = process_video(
            VideoSource(source, every=every),
            pipe,
            tracker=TrackerConfig(record_boxes=annotate is not None),
            identifier=identifier,
        )
    if annotate is not None:
        annotate_video(source, timeline, annotate)
    doc = timeline.to_json()
    if out is not None:
        out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if json_out:
        emit_json(doc)
    else:
        _print_timeline(timeline)


def _print_timeline(timeline: Timeline) -> None:
    table = new_table("track", "from s", "to s", "detections", "best frame", "quality", "who")
    for entry in sorted(timeline.entries, key=lambda e: e.track.id):
        t = entry.track
        who = "-"
        if entry.identity is not None:
            best = entry.identity.best
            who = f"{best.display_name} ({best.distance:.3f})" if best else "unknown"
        table.add_row(
            str(t.id),
            f"{t.first_s:.2f}",
            f"{t.last_s:.2f}",
            str(t.detections),
            str(t.best.frame),
            f"{t.best.quality:.2f}",
            who,
        )
    console.print(table)
    rate = timeline.frames_processed / timeline.seconds if timeline.seconds else 0.0
    err_console.print(
        f"{timeline.frames_processed} frames, {timeline.faces} faces, "
        f"{timeline.embeddings} embeddings in {timeline.seconds:.1f} s ({rate:.1f} frames/s)"
    )


# ---------------------------------------------------------------------- visage edge …


@edge_app.command("run")
def edge_run(
    server: ServerOpt,
    key: KeyOpt,
    collection: CollectionOpt,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Camera index, video file or "
            "stream URL; without it the agent only delivers its queue and exits.",
        ),
    ] = None,
    state: StateOpt = DEFAULT_STATE,
    every: EveryOpt = 3,
    detector: DetectorOpt = "hog",
    upsample: EdgeUpsampleOpt = 0,
    send_crops: Annotated[
        bool,
        typer.Option(
            "--send-crops",
            help="Also send each track's best face chip (JPEG). Off by default: "
            "no image leaves the device.",
        ),
    ] = False,
    trust: TrustOpt = None,
    max_events: Annotated[
        int, typer.Option("--max-events", min=1, help="Queue cap, events.")
    ] = 100_000,
    max_mb: Annotated[
        float, typer.Option("--max-mb", min=0.01, help="Queue cap, MiB of payload.")
    ] = 256.0,
    when_full: Annotated[
        WhenFull,
        typer.Option("--when-full", help="drop-oldest (keep recent activity) or refuse-new."),
    ] = "drop-oldest",
    drain: Annotated[
        float,
        typer.Option("--drain", min=0, help="Seconds to keep uploading after the source ends."),
    ] = 30.0,
    refresh: Annotated[
        float, typer.Option("--refresh", min=1, help="Seconds between snapshot refreshes.")
    ] = 600.0,
    device_id: Annotated[
        str | None, typer.Option("--device-id", help="Default: made once and kept in --state.")
    ] = None,
    queue_strangers: Annotated[
        float | None,
        typer.Option(
            "--queue-strangers",
            min=1,
            metavar="SECONDS",
            help="Also queue tracks the snapshot matches to nobody, each deleted SECONDS after "
            "it was queued if not delivered by then. Off by default: a stranger's embedding is "
            "not kept on the device.",
        ),
    ] = None,
    keep_dead: Annotated[
        float,
        typer.Option(
            "--keep-dead",
            min=0,
            metavar="DAYS",
            help="Keep events the server refused this long for inspection, then delete them.",
        ),
    ] = 7.0,
    json_out: JsonOpt = False,
) -> None:
    """Run the agent: track and identify on this device, queue durably, upload in the background.

    SIGTERM or Ctrl-C stops it cleanly (open tracks are closed and queued).
    """
    from ..api import pipeline as get_pipeline
    from ..edge.agent import Agent, AgentConfig
    from ..edge.queue import DAY, FullPolicy, QueueLimits
    from ..edge.sync import HttpUplink
    from ..edge.video import VideoSource

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = AgentConfig(
        collection=collection,
        state_dir=_state(state),
        send_crops=send_crops,
        queue=QueueLimits(
            max_events=max_events,
            max_bytes=int(max_mb * 1024 * 1024),
            policy=FullPolicy(when_full),
            dead_retention_s=keep_dead * DAY,
        ),
        snapshot_refresh_s=refresh,
        trust=_trust_text(trust),
        drain_s=drain,
        queue_strangers_s=queue_strangers,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    uplink = HttpUplink(server, key)
    pipe = get_pipeline(detector, upsample) if source is not None else None
    frames = VideoSource(source, every=every) if source is not None else None
    try:
        with Agent(config, pipe, uplink, device_id=device_id) as agent:
            report = agent.run(frames, stop=stop)
    finally:
        uplink.close()
        if frames is not None:
            frames.close()
    _print_report(report, uplink.bytes_sent, json_out)


def _print_report(report: AgentReport, sent: int, json_out: bool) -> None:
    doc = {
        "frames": report.frames,
        "faces": report.faces,
        "tracks": report.tracks,
        "identified_on_device": report.identified,
        "strangers": report.strangers,
        "strangers_queued": report.strangers_kept,
        "embeddings": report.embeddings,
        "seconds": round(report.seconds, 2),
        "delivered": report.sync.delivered,
        "duplicates": report.sync.duplicates,
        "failed_uploads": report.sync.failed,
        "pending": report.queue.pending,
        "dead": report.queue.dead,
        "dropped": report.queue.dropped,
        "bytes_sent": sent,
    }
    if json_out:
        emit_json(doc)
    else:
        err_console.print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in doc.items()),
                          markup=False)


@edge_app.command("pull")
def edge_pull(
    server: ServerOpt,
    key: KeyOpt,
    collection: CollectionOpt,
    state: StateOpt = DEFAULT_STATE,
    trust: TrustOpt = None,
    ttl: Annotated[
        int | None,
        typer.Option(
            "--ttl",
            min=1,
            help="Lifetime to ask for, and the longest this device uses the snapshot after "
            "receiving it, seconds (default: the server's, used at most 24 h).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fetch, verify and install the server's offline snapshot for the collection."""
    from ..edge.agent import Agent, AgentConfig
    from ..edge.sync import HttpUplink

    config = AgentConfig(
        collection=collection, state_dir=_state(state), trust=_trust_text(trust), snapshot_ttl_s=ttl
    )
    uplink = HttpUplink(server, key)
    with Agent(config, None, uplink) as agent:
        snap = agent.pull_snapshot()
    uplink.close()
    doc = {
        "collection": snap.collection,
        "sequence": snap.sequence,
        "persons": len(snap.persons),
        "templates": snap.templates,
        "issued_at": snap.issued_at.isoformat(),
        "expires_at": snap.expires_at.isoformat(),
        "threshold": snap.calibration.threshold,
    }
    if json_out:
        emit_json(doc)
    else:
        console.print(
            f"snapshot {snap.sequence} of {printable(snap.collection)!r}: "
            f"{len(snap.persons)} persons, {snap.templates} templates, valid until "
            f"{snap.expires_at:%Y-%m-%d %H:%M} UTC",
            markup=False,
        )


@edge_app.command("status")
def edge_status(state: StateOpt = DEFAULT_STATE, json_out: JsonOpt = False) -> None:
    """The agent's queue (pending, dead, dropped) and snapshot, read from its folder."""
    from ..edge.agent import SNAPSHOT_FILE
    from ..edge.queue import EventQueue

    folder = _state(state)
    with EventQueue(folder / "queue.db") as queue:
        stats = queue.stats()
        dead = queue.dead()
        doc: dict[str, Any] = {
            "device_id": queue.get_meta("device_id"),
            "pending": stats.pending,
            "bytes": stats.bytes,
            "delivered": stats.delivered,
            "dropped": stats.dropped,
            "refused": stats.refused,
            "dead": [{"key": k, "reason": r} for k, r in dead],
            "snapshot_sequence": queue.get_meta("snapshot_sequence"),
            "trusted_key": queue.get_meta("trusted_key"),
            "snapshot_file": str(folder / SNAPSHOT_FILE)
            if (folder / SNAPSHOT_FILE).exists()
            else None,
        }
    if json_out:
        emit_json(doc)
        return
    table = new_table("", "")
    for name, value in doc.items():
        table.add_row(name, str(len(value)) if name == "dead" else str(value))
    console.print(table)


@edge_app.command("purge")
def edge_purge(state: StateOpt = DEFAULT_STATE, json_out: JsonOpt = False) -> None:
    """Delete the events the server refused (dead), queued strangers past their expiry, and the
    saved snapshot if it has expired."""
    from ..edge.agent import QUEUE_FILE, SNAPSHOT_FILE
    from ..edge.queue import EventQueue
    from ..edge.snapshot import delete_if_expired

    folder = _state(state)
    if not (folder / QUEUE_FILE).exists():
        raise InputError(f"no edge agent state in {folder} (no {QUEUE_FILE})")
    with EventQueue(folder / QUEUE_FILE) as queue:
        expired = queue.expire()
        doc = {
            "expired": expired.expired,
            "dead": expired.dead + queue.purge_dead(),
            "snapshot_deleted": delete_if_expired(folder / SNAPSHOT_FILE),
        }
    if json_out:
        emit_json(doc)
    else:
        console.print(
            f"deleted {doc['expired']} expired and {doc['dead']} dead events"
            + ("; the expired snapshot" if doc["snapshot_deleted"] else "")
        )


@edge_app.command("keygen")
def edge_keygen(
    path: Annotated[
        Path,
        typer.Argument(
            dir_okay=False,
            help="PEM file for the server's snapshot signing key (created if missing, mode 600).",
        ),
    ],
) -> None:
    """Create (or read) the server's snapshot signing key and print its public key for devices.

    Point the server at it with VISAGE_EDGE_SIGNING_KEY; by default the server keeps one beside
    its SQLite store.
    """
    from ..signing import load_signing_key, public_key_text

    key = load_signing_key(path, create=True)
    console.print(public_key_text(key.public_key()), soft_wrap=True)
    err_console.print(
        f"serve with VISAGE_EDGE_SIGNING_KEY={printable(path)}; give devices the key above "
        "with --trust",
        markup=False,
    )
