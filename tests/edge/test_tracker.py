"""Video and tracking on test videos made from the labelled photos: the right number of
tracks, the right person per track, a few embeddings per track, an annotated copy."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.edge.conftest import COLLECTION, Person
from tests.edge.videos import Walk, make_video
from visage.edge.identity import GalleryIdentifier
from visage.edge.timeline import annotate_video, process_video
from visage.edge.tracker import TrackerConfig, iou
from visage.edge.video import InvalidVideo, VideoSource
from visage.gallery import Gallery
from visage.pipeline import Pipeline


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_video_source_every_nth_frame(two_people_video: Path) -> None:
    with VideoSource(two_people_video, every=3) as video:
        indexes = [f.index for f in video]
        info = video.info
    assert indexes == list(range(0, 40, 3))
    assert (info.width, info.height, info.frames, info.live) == (640, 360, 40, False)
    frame = next(iter(VideoSource(two_people_video, max_frames=1)))
    assert frame.image.shape == (360, 640, 3) and frame.time_s == 0.0


def test_unreadable_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidVideo, match="no such file"):
        VideoSource(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(InvalidVideo, match="could not open"):
        VideoSource(junk).open()


@pytest.mark.parametrize("every", [1, 3])
def test_two_people_two_tracks_each_identified(
    every: int,
    two_people_video: Path,
    edge_pipeline: Pipeline,
    local_gallery: Gallery,
    walkers: tuple[Person, Person],
) -> None:
    identifier = GalleryIdentifier(local_gallery, COLLECTION, purpose="test")
    timeline = process_video(
        VideoSource(two_people_video, every=every), edge_pipeline, identifier=identifier
    )
    tracks = sorted(timeline.entries, key=lambda e: e.track.first_frame)
    assert len(tracks) == 2, [e.to_json() for e in tracks]
    a, b = walkers
    for entry, person in zip(tracks, (a, b)):
        assert entry.identity is not None and entry.identity.best is not None, entry.to_json()
        best = entry.identity.best
        ext = local_gallery.person(COLLECTION, best.person_id).external_id
        assert ext == person.name
        config, span = TrackerConfig(), entry.track.last_s - entry.track.first_s
        assert entry.track.embedded <= config.shots + 1 + span / config.verify_s
    # A is in view over the first two thirds, B from the second third: they overlap in time.
    first, second = (e.track for e in tracks)
    assert first.first_frame < 3 and second.first_frame >= 12
    assert second.first_frame < first.last_frame < second.last_frame
    assert timeline.embeddings < timeline.faces
    doc = json.loads(json.dumps(timeline.to_json()))
    assert [t["identity"]["person_id"] is not None for t in doc["tracks"]] == [True, True]


def test_reentry_is_a_new_track_and_a_jump_is_not(
    tmp_path: Path, edge_pipeline: Pipeline, walkers: tuple[Person, Person]
) -> None:
    """A leaves for 2 s (beyond max_missed_s) and comes back: two tracks. B jumps across the
    frame between two frames (no box overlap): one track, relinked by appearance."""
    a, b = walkers
    walks = [
        Walk(a.video_photo, 0, 8, (20, 20), (60, 30)),
        Walk(a.video_photo, 28, 36, (60, 30), (20, 20)),
        Walk(b.video_photo, 10, 16, (40, 150), (80, 150)),
        Walk(b.video_photo, 16, 24, (420, 120), (440, 100)),
    ]
    video = make_video(tmp_path / "jumps.avi", walks, frames=38)
    timeline = process_video(
        VideoSource(video), edge_pipeline, tracker=TrackerConfig(max_missed_s=1.0)
    )
    spans = sorted((e.track.first_frame, e.track.last_frame) for e in timeline.entries)
    assert len(spans) == 3, spans
    assert spans[0][1] <= 8 and spans[2][0] >= 28  # A's two visits
    assert spans[1][0] >= 10 and spans[1][1] >= 20  # B: one track across the jump


def test_annotated_video(tmp_path: Path, two_people_video: Path, edge_pipeline: Pipeline) -> None:
    timeline = process_video(
        VideoSource(two_people_video, every=2),
        edge_pipeline,
        tracker=TrackerConfig(record_boxes=True),
    )
    out = annotate_video(two_people_video, timeline, tmp_path / "annotated.avi")
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    capture.release()


def _named_tracks(
    video: Path, pipeline: Pipeline, gallery: Gallery, config: TrackerConfig, every: int = 1
) -> list[tuple[int, int, str | None]]:
    """(first frame, last frame, identified person's name or None) per track, in time order."""
    identifier = GalleryIdentifier(gallery, COLLECTION, purpose="test")
    timeline = process_video(
        VideoSource(video, every=every), pipeline, identifier=identifier, tracker=config
    )
    named = []
    for entry in sorted(timeline.entries, key=lambda e: e.track.first_frame):
        best = entry.identity.best if entry.identity is not None else None
        name = gallery.person(COLLECTION, best.person_id).external_id if best else None
        named.append((entry.track.first_frame, entry.track.last_frame, name))
    return named


SPOT = (235.0, 90.0)


def test_a_cut_at_the_same_spot_splits_the_track_by_identity(
    tmp_path: Path, edge_pipeline: Pipeline, local_gallery: Gallery, walkers: tuple[Person, Person]
) -> None:
    """B replaces A at the very same place from one frame to the next, on the same background:
    box overlap would carry A's track and name on (the control, with the embedding check off);
    the check splits it and names both people right."""
    a, b = walkers
    walks = [Walk(a.video_photo, 0, 20, SPOT, SPOT), Walk(b.video_photo, 20, 40, SPOT, SPOT)]
    video = make_video(tmp_path / "cut.avi", walks, frames=40)
    unchecked = TrackerConfig(verify_s=1e9)
    assert len(_named_tracks(video, edge_pipeline, local_gallery, unchecked)) == 1  # one name
    tracks = _named_tracks(video, edge_pipeline, local_gallery, TrackerConfig())
    assert [n for *_, n in tracks] == [a.name, b.name], tracks
    assert tracks[0][1] < 20 <= tracks[1][0] <= 25  # B's track starts within verify_s of the cut


def test_three_people_after_gaps_each_named(
    tmp_path: Path, edge_pipeline: Pipeline, local_gallery: Gallery, cast: list[Person]
) -> None:
    """Three people at the same spot, each after a 1 s blank, every second frame processed."""
    people = cast[:3]
    walks = [Walk(p.video_photo, 30 * k, 30 * k + 20, SPOT, SPOT) for k, p in enumerate(people)]
    video = make_video(tmp_path / "gaps.avi", walks, frames=90)
    tracks = _named_tracks(video, edge_pipeline, local_gallery, TrackerConfig(), every=2)
    assert [n for *_, n in tracks] == [p.name for p in people], tracks


def test_a_shot_cut_closes_every_track(
    tmp_path: Path, edge_pipeline: Pipeline, local_gallery: Gallery, walkers: tuple[Person, Person]
) -> None:
    """A cut to another scene (the background changes) closes tracks even with the embedding
    check off; with cut detection off too, the one track is the failure being guarded."""
    a, b = walkers
    walks = [Walk(a.video_photo, 0, 20, SPOT, SPOT), Walk(b.video_photo, 20, 40, SPOT, SPOT)]
    video = make_video(
        tmp_path / "scene.avi",
        walks,
        frames=40,
        background=lambda f: (118, 124, 130) if f < 20 else (30, 30, 40),
    )
    blind = TrackerConfig(verify_s=1e9, cut_change=1.0)
    assert len(_named_tracks(video, edge_pipeline, local_gallery, blind)) == 1
    tracks = _named_tracks(video, edge_pipeline, local_gallery, TrackerConfig(verify_s=1e9))
    assert [(f, n) for f, _, n in tracks] == [(0, a.name), (20, b.name)], tracks


def test_a_slow_cross_fade_ends_with_the_second_person(
    tmp_path: Path, edge_pipeline: Pipeline, local_gallery: Gallery, walkers: tuple[Person, Person]
) -> None:
    """A fades out while B fades in at the same spot over 1 s: no frame is a cut, so only the
    embedding check can tell; the last track must be B's and no track may be named wrongly."""
    a, b = walkers
    walks = [
        Walk(a.video_photo, 0, 26, SPOT, SPOT, fade_out=10),
        Walk(b.video_photo, 16, 44, SPOT, SPOT, fade_in=10),
    ]
    video = make_video(tmp_path / "fade.avi", walks, frames=44)
    tracks = _named_tracks(video, edge_pipeline, local_gallery, TrackerConfig())
    names = [n for *_, n in tracks]
    assert names[0] == a.name and names[-1] == b.name, tracks
    assert set(names) <= {a.name, b.name, None}, tracks


def test_two_people_swapping_places_keep_their_names(
    tmp_path: Path, edge_pipeline: Pipeline, local_gallery: Gallery, walkers: tuple[Person, Person]
) -> None:
    """A walks left to right and B right to left on one line, crossing mid-frame: every track
    carries its own person's name, and each person ends up named on the far side."""
    a, b = walkers
    walks = [
        Walk(a.video_photo, 0, 40, (20, 90), (450, 90)),
        Walk(b.video_photo, 0, 40, (450, 90), (20, 90)),
    ]
    video = make_video(tmp_path / "swap.avi", walks, frames=40)
    identifier = GalleryIdentifier(local_gallery, COLLECTION, purpose="test")
    timeline = process_video(
        VideoSource(video),
        edge_pipeline,
        identifier=identifier,
        tracker=TrackerConfig(record_boxes=True),
    )
    named: dict[str, int] = {}
    for entry in timeline.entries:
        best = entry.identity.best if entry.identity is not None else None
        assert best is not None, entry.to_json()
        name = local_gallery.person(COLLECTION, best.person_id).external_id
        # Whose path the track's boxes followed, away from the crossing (where both are near).
        owners = [_walker_at(walks, f, box) for f, box in entry.track.boxes]
        whose = {o for o in owners if o is not None}
        assert whose <= {0, 1} and len(whose) <= 1, (entry.to_json(), owners)
        if whose:
            assert name == (a.name, b.name)[whose.pop()], (entry.to_json(), name)
        named[name] = max(named.get(name, 0), entry.track.last_frame)
    assert min(named.get(a.name, 0), named.get(b.name, 0)) >= 35, named


def _walker_at(walks: list[Walk], frame: int, box: tuple[int, int, int, int]) -> int | None:
    """Index of the walk whose crop holds ``box``'s centre at ``frame``; None near a crossing."""
    cx = (box[0] + box[2]) / 2
    centres = []
    for walk in walks:
        place = walk.placement(frame)
        centres.append(None if place is None else place[0] + place[2] / 2)
    known = [c for c in centres if c is not None]
    if len(known) == 2 and abs(known[0] - known[1]) < 200:
        return None
    dist = [abs(cx - c) if c is not None else float("inf") for c in centres]
    return int(np.argmin(dist))
