"""Video and tracking on test videos made from the labelled photos: the right number of
tracks, the right person per track, a few embeddings per track, an annotated copy."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
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
        assert entry.track.embedded <= TrackerConfig().shots + 1
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
