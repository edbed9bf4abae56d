"""Video in, a timeline out: detect on every Nth frame, track, identify each track once.

    >>> timeline = process_video(VideoSource("door.mp4", every=3), Pipeline(upsample=0))
    >>> timeline.to_json()["tracks"][0]["identity"]

:class:`VideoProcessor` is the streaming core the edge agent shares: it yields each track as it
closes, so a camera can run for months in constant memory. :func:`annotate_video` draws the
tracks and their identities onto a copy of a video file.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..decision import default_calibration
from ..errors import InputError
from ..models.base import Box
from ..pipeline import Pipeline
from .identity import Identifier, Identity
from .tracker import Tracker, TrackerConfig, TrackResult
from .video import Frame, VideoInfo, VideoSource


@dataclass(frozen=True)
class TimelineEntry:
    """One track and, when an identifier was given, who it is."""

    track: TrackResult
    identity: Identity | None

    @property
    def label(self) -> str:
        """``Name`` when identified, else ``track N``."""
        best = self.identity.best if self.identity is not None else None
        return best.display_name if best is not None else f"track {self.track.id}"

    def to_json(self) -> dict[str, Any]:
        t = self.track
        return {
            "track": t.id,
            "first_s": round(t.first_s, 3),
            "last_s": round(t.last_s, 3),
            "first_frame": t.first_frame,
            "last_frame": t.last_frame,
            "detections": t.detections,
            "embedded": t.embedded,
            "best_frame": t.best.frame,
            "best_s": round(t.best.time_s, 3),
            "best_box": list(t.best.box),
            "best_quality": round(t.best.quality, 4),
            "identity": self.identity.to_json() if self.identity is not None else None,
        }


@dataclass(frozen=True)
class Timeline:
    """Every track of a video, in the order they closed, with the cost of finding them."""

    source: VideoInfo
    every: int
    frames_processed: int
    faces: int
    embeddings: int
    seconds: float
    entries: tuple[TimelineEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source.source,
            "fps": self.source.fps,
            "width": self.source.width,
            "height": self.source.height,
            "every": self.every,
            "frames_processed": self.frames_processed,
            "faces": self.faces,
            "embeddings": self.embeddings,
            "seconds": round(self.seconds, 3),
            "tracks": [e.to_json() for e in sorted(self.entries, key=lambda e: e.track.id)],
        }


class VideoProcessor:
    """Detect → track → identify over a stream of frames; counts what it spent.

    ``identifier`` names each closed track (``None``: tracks only). The tracker's relink
    distance defaults to the identifier's threshold, else the shipped calibration's.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        tracker: TrackerConfig | None = None,
        identifier: Identifier | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.identifier = identifier
        threshold = (
            identifier.threshold
            if identifier is not None
            else default_calibration(pipeline.model_id).threshold
        )
        self.tracker = Tracker(
            pipeline.embed_chips, tracker or TrackerConfig(), relink_distance=threshold
        )
        self.frames = 0
        self.faces = 0

    @property
    def embeddings(self) -> int:
        return self.tracker.embeddings

    def run(self, frames: Iterable[Frame]) -> Iterator[TimelineEntry]:
        """Yield each track as it closes; the rest when ``frames`` ends."""
        for frame in frames:
            faces = self.pipeline.detect(frame.image)
            self.frames += 1
            self.faces += len(faces)
            yield from self._named(
                self.tracker.update(frame.index, frame.time_s, frame.image, faces)
            )
        yield from self._named(self.tracker.finish())

    def _named(self, tracks: list[TrackResult]) -> Iterator[TimelineEntry]:
        for track in tracks:
            identity = self.identifier.identify(track.embedding) if self.identifier else None
            yield TimelineEntry(track, identity)


def process_video(
    source: VideoSource,
    pipeline: Pipeline,
    *,
    tracker: TrackerConfig | None = None,
    identifier: Identifier | None = None,
) -> Timeline:
    """The whole timeline of a video file (or of a live source until it ends)."""
    processor = VideoProcessor(pipeline, tracker=tracker, identifier=identifier)
    started = time.perf_counter()
    with source:
        entries = tuple(processor.run(source))
    return Timeline(
        source=source.info,
        every=source.every,
        frames_processed=processor.frames,
        faces=processor.faces,
        embeddings=processor.embeddings,
        seconds=time.perf_counter() - started,
        entries=entries,
    )


def _fourcc(path: Path) -> str:
    return {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}.get(
        path.suffix.lower(), "MJPG"
    )


def annotate_video(video: str | Path, timeline: Timeline, output: str | Path) -> Path:
    """Copy ``video`` to ``output`` with each track's box and label drawn (a second pass).

    Boxes must have been recorded (``TrackerConfig(record_boxes=True)``); between processed
    frames the last box is held. The codec follows the extension (``.mp4``: mp4v, else MJPG).
    """
    import cv2

    dest = Path(output)
    if not any(e.track.boxes for e in timeline.entries) and timeline.entries:
        raise InputError("the timeline has no boxes: process with record_boxes=True to annotate")
    paths = [
        (e, [f for f, _ in e.track.boxes], [b for _, b in e.track.boxes]) for e in timeline.entries
    ]
    info = timeline.source
    writer = cv2.VideoWriter(
        str(dest), cv2.VideoWriter.fourcc(*_fourcc(dest)), info.fps, (info.width, info.height)
    )
    if not writer.isOpened():
        raise InputError(f"{dest}: cannot write a video there (extension or codec)")
    try:
        with VideoSource(video) as source:
            for frame in source:
                bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
                for entry, frames, boxes in paths:
                    box = _box_at(frame.index, frames, boxes, timeline.every)
                    if box is not None:
                        _draw(
                            cv2,
                            bgr,
                            box,
                            entry.label,
                            known=entry.label != f"track {entry.track.id}",
                        )
                writer.write(bgr)
    finally:
        writer.release()
    return dest


def _box_at(index: int, frames: list[int], boxes: list[Box], every: int) -> Box | None:
    """The track's box at frame ``index``: the last one recorded, held for ``every`` frames."""
    at = bisect.bisect_right(frames, index) - 1
    if at < 0 or index - frames[at] >= every:
        return None
    return boxes[at]


def _draw(cv2: Any, image: Any, box: Box, label: str, *, known: bool) -> None:
    colour = (60, 200, 60) if known else (0, 165, 255)
    left, top, right, bottom = box
    cv2.rectangle(image, (left, top), (right, bottom), colour, 2)
    cv2.putText(
        image,
        label,
        (left, max(top - 6, 12)),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        colour,
        1,
        cv2.LINE_AA,
    )
