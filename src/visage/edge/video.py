"""Frames from video files, camera indexes and stream URLs (RTSP, HTTP), through OpenCV.

A :class:`VideoSource` yields RGB :class:`Frame` records one at a time, so memory does not grow
with the length of a video. With ``every=N`` only every Nth frame is decoded into pixels: the
others are ``grab()``-ed (demuxed and skipped), which on a 720p H.264 file costs about a tenth
of a full read. Times come from the frame number and the file's frame rate for files, and from
a monotonic clock for live sources (cameras and streams have no reliable timestamps).

    >>> with VideoSource("door.mp4", every=3) as video:
    ...     for frame in video:
    ...         faces = pipeline.detect(frame.image)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from ..errors import InputError
from ..models.base import Image

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class InvalidVideo(InputError):
    """A video source that cannot be opened or decoded; the message names it."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        super().__init__(f"{source}: cannot read video: {reason}")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its number in the source (0-based), its time in seconds, RGB pixels."""

    index: int
    time_s: float
    image: Image


@dataclass(frozen=True)
class VideoInfo:
    """What a source says about itself. ``frames`` is ``None`` for live sources."""

    source: str
    fps: float
    width: int
    height: int
    frames: int | None
    live: bool


def parse_source(spec: str | int | Path) -> str | int:
    """A camera index (``0``, ``"1"``), a stream URL, or a file path that must exist."""
    if isinstance(spec, int):
        return spec
    text = str(spec)
    if text.isdigit():
        return int(text)
    if text.lower().startswith(STREAM_SCHEMES):
        return text
    if not Path(text).is_file():
        raise InvalidVideo(text, "no such file")
    return text


class VideoSource:
    """Frames of a video file, camera or stream, every ``every``-th frame, as RGB arrays.

    ``every``: process one frame in N (1 = all). ``max_frames`` stops after that many source
    frames (``None``: until the source ends). Opening fails with :class:`InvalidVideo`.
    """

    def __init__(
        self, spec: str | int | Path, *, every: int = 1, max_frames: int | None = None
    ) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.spec = parse_source(spec)
        self.every = every
        self.max_frames = max_frames
        self._capture: Any = None
        self._info: VideoInfo | None = None

    @property
    def info(self) -> VideoInfo:
        """Frame rate, size and length (opens the source if needed)."""
        return self._info if self._info is not None else self.open()

    def open(self) -> VideoInfo:
        """Open the source now (iteration opens it otherwise); what it says about itself."""
        import cv2

        if self._capture is not None and self._info is not None:
            return self._info
        capture = cv2.VideoCapture(self.spec)
        if not capture.isOpened():
            capture.release()
            raise InvalidVideo(str(self.spec), "OpenCV could not open it (codec, device or URL)")
        live = not isinstance(self.spec, str) or self.spec.lower().startswith(STREAM_SCHEMES)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        self._capture = capture
        self._info = VideoInfo(
            source=str(self.spec),
            fps=fps if 0 < fps < 1000 else 25.0,
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            frames=None if live or count <= 0 else count,
            live=live,
        )
        return self._info

    def close(self) -> None:
        """Release the file, device or connection."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        info = self.open()
        capture = self._capture
        started = time.monotonic()
        index = 0
        while self.max_frames is None or index < self.max_frames:
            if index % self.every:
                if not capture.grab():
                    return
                index += 1
                continue
            ok, bgr = capture.read()
            if not ok or bgr is None:
                return
            when = time.monotonic() - started if info.live else index / info.fps
            rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            yield Frame(index=index, time_s=when, image=rgb)
            index += 1
