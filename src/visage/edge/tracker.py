"""Link faces across frames into tracks, keep each track's best shots, embed only a few.

Per processed frame, first every track unseen for ``max_missed_s`` closes, and on a shot cut
(the frame's 32x18 grey thumbnail differs from the last one's by more than ``cut_change`` on
average) every open track closes: nobody continues across a gap or a cut. Then detections are
linked to open tracks in two passes:

1. **Box overlap.** Pairs (track's last box, detection) are taken greedily by IoU, highest
   first, down to ``iou_match``. Costs nothing beyond detection, so it is trusted for at most
   ``verify_s``: a track linked by overlap alone for that long has its face embedded and compared
   with the track's appearance. Past ``relink_distance`` it is someone else (a cut at the same
   spot, a cross-fade, two people swapping places): the track forgets what it took since its
   last check and the face goes on to pass 2 with the leftovers.
2. **Embedding similarity.** Detections and tracks left over (a fast move, a missed frame, two
   people crossing) are compared by embedding: each leftover detection is embedded once and
   linked to the nearest unmatched track within ``relink_distance`` (the calibrated threshold
   by default).

A detection still unlinked starts a track (its embedding from pass 2 is the track's first). A
track unseen for ``max_missed_s`` closes: its ``shots`` best-quality chips that have no
embedding yet are embedded in one batch, and the track's embedding is the normalised mean of
its shots'. So a track of ``d`` seconds costs at most ``shots + 1 + d / verify_s`` embeddings
however many frames it spans — the saving over embedding every face of every frame (see
docs/performance-edge.md).

Memory is bounded: at most ``max_tracks`` open tracks (the least recently seen closes first),
each holding ``shots`` aligned 150x150 chips (66 KB each) and, only when ``record_boxes`` is
set (for drawing an annotated video), one box per detection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from .. import align as _align
from ..decision import distances, normalize
from ..models.base import Box, Image
from ..pipeline import Face

Embed = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]
"""Aligned chips ``(n, 150, 150, 3) uint8`` to L2-normalised embeddings ``(n, 128) float32``."""


@dataclass(frozen=True)
class TrackerConfig:
    """How tracks are linked, closed and summarised.

    ``iou_match``: the least box overlap that links a detection to a track by position.
    ``relink_distance``: the largest embedding distance that links by appearance (the
    calibrated decision threshold when ``None``; the caller passes it). ``verify_s``: the longest
    a track is extended on box overlap alone before an embedding checks the face is still the
    track's person (0: every frame). ``cut_change``: the mean grey-level change (0-1) between
    consecutive thumbnails that counts as a shot cut (1 turns cut detection off; a face moving
    on a still background changes ~0.01, a cut to another scene 0.2-0.5). ``max_missed_s``: a
    track unseen this long is closed. ``shots``: best-quality chips kept and embedded per track.
    ``shot_gain``: once ``shots`` are kept, a new view replaces the worst only when its quality
    is at least this much higher (a face walking closer improves a little every frame; without
    it each frame would be re-aligned, ~3.5 ms a face). ``min_detections``: shorter tracks are
    dropped as noise. ``max_tracks``: open tracks held at once. ``record_boxes``: keep every
    box, for an annotated video.
    """

    iou_match: float = 0.3
    relink_distance: float | None = None
    verify_s: float = 0.5
    cut_change: float = 0.15
    max_missed_s: float = 1.0
    shots: int = 3
    shot_gain: float = 0.02
    min_detections: int = 1
    max_tracks: int = 32
    record_boxes: bool = False

    def __post_init__(self) -> None:
        if self.shots < 1 or self.max_tracks < 1 or self.min_detections < 1:
            raise ValueError("shots, max_tracks and min_detections must be at least 1")
        if not 0.0 < self.iou_match <= 1.0:
            raise ValueError("iou_match must be in (0, 1]")
        if self.verify_s < 0 or not 0.0 < self.cut_change <= 1.0:
            raise ValueError("verify_s must be >= 0 and cut_change in (0, 1]")


@dataclass(frozen=True)
class Shot:
    """One kept view of a track: where and when, its quality, and (once embedded) its embedding."""

    frame: int
    time_s: float
    box: Box
    quality: float
    chip: npt.NDArray[np.uint8] = field(repr=False)
    embedding: npt.NDArray[np.float32] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TrackResult:
    """A closed track: one person in view from ``first_s`` to ``last_s``.

    ``embedding`` ``(128,) float32`` L2-normalised: the mean of the shots' embeddings.
    ``best`` is the highest-quality shot (its chip can be sent or drawn); ``embedded`` counts the
    embeddings this track cost; ``boxes`` holds ``(frame, box)`` when boxes were recorded.
    """

    id: int
    first_frame: int
    last_frame: int
    first_s: float
    last_s: float
    detections: int
    best: Shot
    shots: tuple[Shot, ...]
    embedding: npt.NDArray[np.float32] = field(repr=False)
    embedded: int
    boxes: tuple[tuple[int, Box], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class _Checked:
    """A track as it stood at its last embedding check: what a failed check rolls back to."""

    last_frame: int
    last_s: float
    box: Box
    detections: int
    shots: tuple[Shot, ...]
    boxes: int


@dataclass
class _Track:
    id: int
    first_frame: int
    first_s: float
    last_frame: int
    last_s: float
    box: Box
    detections: int = 0
    embedded: int = 0
    shots: list[Shot] = field(default_factory=list)
    boxes: list[tuple[int, Box]] = field(default_factory=list)
    seen: npt.NDArray[np.float32] | None = None  # sum of every embedding computed for it
    checked: _Checked | None = None

    def remember(self, vector: npt.NDArray[np.float32]) -> None:
        """Add an embedding of this track's face; the track as it stands is now checked."""
        self.seen = vector.copy() if self.seen is None else self.seen + vector
        self.embedded += 1
        self.checked = _Checked(
            self.last_frame,
            self.last_s,
            self.box,
            self.detections,
            tuple(self.shots),
            len(self.boxes),
        )

    def roll_back(self) -> None:
        """Forget the detections linked by box overlap since the last check (another face)."""
        c = self.checked
        assert c is not None, "a track is checked when it starts"
        self.last_frame, self.last_s, self.box, self.detections = (
            c.last_frame,
            c.last_s,
            c.box,
            c.detections,
        )
        self.shots = list(c.shots)
        del self.boxes[c.boxes :]

    @property
    def last_checked_s(self) -> float:
        return self.checked.last_s if self.checked is not None else self.first_s

    def appearance(self) -> npt.NDArray[np.float32] | None:
        """The normalised mean of every embedding computed for this track (for relinking)."""
        return None if self.seen is None else normalize(self.seen)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = float(w * h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Turns per-frame faces into :class:`TrackResult` records; feed frames in order.

    ``embed`` embeds aligned chips (``Pipeline.embed_chips``). ``update`` returns the tracks
    that closed at this frame; ``finish`` closes the rest at the end of the source.
    """

    def __init__(self, embed: Embed, config: TrackerConfig, *, relink_distance: float) -> None:
        self._embed = embed
        self.config = config
        self._relink = (
            config.relink_distance if config.relink_distance is not None else relink_distance
        )
        self._open: list[_Track] = []
        self._next_id = 1
        self._thumb: npt.NDArray[np.float32] | None = None
        self.embeddings = 0
        """Embeddings computed so far (for the cost figures)."""

    @property
    def open_tracks(self) -> int:
        return len(self._open)

    def update(
        self, frame: int, time_s: float, image: Image, faces: Sequence[Face]
    ) -> list[TrackResult]:
        """Link this frame's detected faces (no embeddings needed) and close stale tracks."""
        closed = self._close(lambda t: time_s - t.last_s > self.config.max_missed_s)
        if self._cut(image):
            closed += self._close(lambda t: True)
        matches = self._match_boxes(list(self._open), faces)
        by_box = {i for _, i in matches}
        due = [i for t, i in matches if time_s - t.last_checked_s >= self.config.verify_s]
        todo = due + [i for i in range(len(faces)) if i not in by_box]
        chips = {i: _align.align(image, faces[i].landmarks) for i in todo}
        vectors = (
            dict(zip(todo, self._embed_counted(np.stack(list(chips.values()))))) if todo else {}
        )
        unmatched_tracks = [t for t in self._open if all(t is not m for m, _ in matches)]
        unmatched = [i for i in range(len(faces)) if i not in by_box]
        for track, i in matches:
            vector = vectors.get(i)
            if vector is not None and self._far(track, vector):
                track.roll_back()  # someone else took this place: relink both by appearance
                unmatched_tracks.append(track)
                unmatched.append(i)
                continue
            self._extend(track, frame, time_s, image, faces[i], chips.get(i), vector)
            if vector is not None:
                track.remember(vector)
        if unmatched:
            stacked = np.stack([vectors[i] for i in unmatched])
            linked = self._match_appearance(unmatched_tracks, stacked)
            for j, i in enumerate(unmatched):
                target = linked.get(j) or self._start(frame, time_s, faces[i].box)
                self._extend(target, frame, time_s, image, faces[i], chips[i], vectors[i])
                target.remember(vectors[i])
        return closed + self._evict()

    def _cut(self, image: Image) -> bool:
        """True when this frame starts a new shot (see ``TrackerConfig.cut_change``)."""
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        thumb = cv2.resize(grey, (32, 18), interpolation=cv2.INTER_AREA).astype(np.float32)
        thumb /= 255
        previous, self._thumb = self._thumb, thumb
        return (
            previous is not None and float(np.abs(thumb - previous).mean()) > self.config.cut_change
        )

    def _far(self, track: _Track, vector: npt.NDArray[np.float32]) -> bool:
        appearance = track.appearance()
        return (
            appearance is not None and float(distances(appearance, vector[None])[0]) > self._relink
        )

    def finish(self) -> list[TrackResult]:
        """Close every open track (the source ended)."""
        return self._close(lambda t: True)

    def _embed_counted(self, chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.embeddings += len(chips)
        return self._embed(chips)

    def _match_boxes(self, tracks: list[_Track], faces: Sequence[Face]) -> list[tuple[_Track, int]]:
        pairs = sorted(
            (
                (iou(t.box, f.box), ti, fi)
                for ti, t in enumerate(tracks)
                for fi, f in enumerate(faces)
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_f: set[int] = set()
        matches: list[tuple[_Track, int]] = []
        for overlap, ti, fi in pairs:
            if overlap < self.config.iou_match:
                break
            if ti in used_t or fi in used_f:
                continue
            used_t.add(ti)
            used_f.add(fi)
            matches.append((tracks[ti], fi))
        return matches

    def _match_appearance(
        self, tracks: list[_Track], vectors: npt.NDArray[np.float32]
    ) -> dict[int, _Track]:
        """Greedy nearest pairs (detection index -> track) within the relink distance."""
        known = [(t, a) for t in tracks if (a := t.appearance()) is not None]
        if not known:
            return {}
        pairs = sorted(
            (float(d), j, ti)
            for ti, (_, a) in enumerate(known)
            for j, d in enumerate(distances(a, vectors))
        )
        linked: dict[int, _Track] = {}
        used: set[int] = set()
        for dist, j, ti in pairs:
            if dist > self._relink:
                break
            if j in linked or ti in used:
                continue
            linked[j] = known[ti][0]
            used.add(ti)
        return linked

    def _start(self, frame: int, time_s: float, box: Box) -> _Track:
        track = _Track(self._next_id, frame, time_s, frame, time_s, box)
        self._next_id += 1
        self._open.append(track)
        return track

    def _extend(
        self,
        track: _Track,
        frame: int,
        time_s: float,
        image: Image,
        face: Face,
        chip: npt.NDArray[np.uint8] | None,
        vector: npt.NDArray[np.float32] | None,
    ) -> None:
        track.box, track.last_frame, track.last_s = face.box, frame, time_s
        track.detections += 1
        if self.config.record_boxes:
            track.boxes.append((frame, face.box))
        quality = face.quality.score
        shots = track.shots
        if (
            len(shots) >= self.config.shots
            and quality < min(s.quality for s in shots) + self.config.shot_gain
        ):
            return
        if chip is None:
            chip = _align.align(image, face.landmarks)
        shots.append(Shot(frame, time_s, face.box, quality, chip, vector))
        shots.sort(key=lambda s: -s.quality)
        del shots[self.config.shots :]

    def _evict(self) -> list[TrackResult]:
        """Close the least recently seen tracks past ``max_tracks``."""
        excess = len(self._open) - self.config.max_tracks
        if excess <= 0:
            return []
        stale = {id(t) for t in sorted(self._open, key=lambda t: t.last_s)[:excess]}
        return self._close(lambda t: id(t) in stale)

    def _close(self, done: Callable[[_Track], bool]) -> list[TrackResult]:
        closing = [t for t in self._open if done(t)]
        if not closing:
            return []
        self._open = [t for t in self._open if not done(t)]
        kept = [t for t in closing if t.detections >= self.config.min_detections]
        missing = [(t, k) for t in kept for k, s in enumerate(t.shots) if s.embedding is None]
        if missing:
            vectors = self._embed_counted(np.stack([t.shots[k].chip for t, k in missing]))
            for (t, k), v in zip(missing, vectors):
                old = t.shots[k]
                t.shots[k] = Shot(old.frame, old.time_s, old.box, old.quality, old.chip, v)
                t.remember(v)
        return [self._result(t) for t in kept]

    @staticmethod
    def _result(t: _Track) -> TrackResult:
        """The summary; its embedding is the mean over the best shots (all embedded by now)."""
        vectors = np.stack([s.embedding for s in t.shots if s.embedding is not None])
        return TrackResult(
            id=t.id,
            first_frame=t.first_frame,
            last_frame=t.last_frame,
            first_s=t.first_s,
            last_s=t.last_s,
            detections=t.detections,
            best=t.shots[0],
            shots=tuple(t.shots),
            embedding=normalize(vectors.mean(axis=0)),
            embedded=t.embedded,
            boxes=tuple(t.boxes),
        )
