"""The pipeline on real photos: detection rate, verification accuracy, batching, quality."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import visage
from visage.errors import NoFace
from visage.pipeline import DETECT_MAX_SIDE, Pipeline

from .conftest import EmbeddedSet


def read_pairs(faces_dir: Path) -> tuple[list[tuple[Path, Path, bool]], int]:
    lines = (faces_dir / "pairs_dev.txt").read_text().splitlines()
    folds, _ = (int(v) for v in lines[0].split())
    root = faces_dir / "people"
    pairs = []
    for line in lines[1:]:
        t = line.split("\t")
        if len(t) == 3:
            pairs.append((root / t[0] / f"{t[0]}_{int(t[1]):04d}.jpg", root / t[0] / f"{t[0]}_{int(t[2]):04d}.jpg", True))
        elif len(t) == 4:
            pairs.append((root / t[0] / f"{t[0]}_{int(t[1]):04d}.jpg", root / t[2] / f"{t[2]}_{int(t[3]):04d}.jpg", False))
    return pairs, folds


def test_labelled_face_found_as_documented(embedded: EmbeddedSet, people_photos: list[Path]) -> None:
    """docs/pipeline.md: 444 of 445; one more miss is within a standard error (0.2%)."""
    found = sum(str(p) in embedded.labelled for p in people_photos)
    assert found >= len(people_photos) - 2, f"labelled face found in {found}/{len(people_photos)}"


def test_three_fold_accuracy_on_pairs_dev(embedded: EmbeddedSet, faces_dir: Path) -> None:
    """Per fold, the threshold maximising accuracy on the other folds; a missed face is an error."""
    pairs, folds = read_pairs(faces_dir)
    dist = np.array([
        visage.distance(embedded.labelled[str(a)].embedding, embedded.labelled[str(b)].embedding)
        if str(a) in embedded.labelled and str(b) in embedded.labelled else np.inf
        for a, b, _ in pairs
    ])
    same = np.array([s for _, _, s in pairs])
    fold = np.repeat(np.arange(folds), len(pairs) // folds)
    accs = []
    for k in range(folds):
        train = fold != k
        candidates = np.unique(dist[train & np.isfinite(dist)])
        best = max(candidates, key=lambda t: ((dist[train] <= t) == same[train]).mean())
        accs.append(((dist[~train] <= best) == same[~train]).mean())
    assert np.mean(accs) >= 0.97, f"3-fold accuracy {np.mean(accs):.4f} ({accs})"


def test_face_record_invariants(embedded: EmbeddedSet) -> None:
    face = next(iter(embedded.labelled.values()))
    assert face.embedding is not None and face.embedding.dtype == np.float32
    assert face.embedding.shape == (128,) and abs(np.linalg.norm(face.embedding) - 1) < 1e-5
    assert face.landmarks.shape == (5, 2) and face.model_id == "dlib_resnet_v1"
    assert 0 <= face.quality.score <= 1


def test_embed_many_reports_bad_files_and_goes_on(people_photos: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    sources = [people_photos[0], bad, people_photos[1]]
    results = list(Pipeline().embed_many(sources, workers=1))
    assert [r.source for r in results] == [str(s) for s in sources]
    assert results[0].ok and results[2].ok and results[0].faces
    assert not results[1].ok and "bad.jpg" in (results[1].error or "")


def test_workers_give_the_same_answer(embedded: EmbeddedSet, people_photos: list[Path]) -> None:
    """The 2-worker session fixture agrees with an in-process run."""
    sample = people_photos[:6]
    for r in Pipeline().embed_many(sample, workers=1):
        other = embedded.results[r.source]
        assert len(r.faces) == len(other.faces)
        for a, b in zip(r.faces, other.faces):
            assert a.box == b.box and np.abs(a.embedding - b.embedding).max() < 1e-6


def test_tta_changes_embeddings_but_keeps_identity(people_photos: list[Path]) -> None:
    img = visage.load_image(people_photos[0])
    plain, flipped = Pipeline().embed(img)[0], Pipeline(tta=True).embed(img)[0]
    assert flipped.model_id == "dlib_resnet_v1+flip"
    d = visage.distance(plain.embedding, flipped.embedding)
    assert 0 < d < 0.2


def test_public_api_compare(people_photos: list[Path]) -> None:
    same_person = [p for p in people_photos if p.parent == people_photos[0].parent]
    result = visage.compare(same_person[0], same_person[1])
    assert result.threshold_source.startswith(f"{result.threshold:.4f}")
    assert result.same is True and result.distance <= result.threshold, result
    other = next(p for p in people_photos if p.parent != people_photos[0].parent)
    different = visage.compare(same_person[0], other)
    assert different.same is False and different.distance > result.threshold, different


def test_compare_without_face_says_so(tmp_path: Path, people_photos: list[Path]) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 120), (90, 90, 90)).save(blank)
    with pytest.raises(NoFace, match="no face"):
        visage.compare(blank, people_photos[0])


def test_quality_reasons_for_degraded_photos(people_photos: list[Path]) -> None:
    original = Image.open(people_photos[0]).convert("RGB")
    good = visage.detect(np.asarray(original))[0].quality
    assert good.acceptable, good.reasons

    def reasons(im: Image.Image, upsample: int = 1) -> tuple[str, ...]:
        faces = visage.detect(np.asarray(im), upsample=upsample)
        assert faces, "the degraded face should still be detected"
        return faces[0].quality.reasons

    small = original.resize((70, 70), Image.BILINEAR)
    assert any("too small" in r for r in reasons(small, upsample=2))
    blurred = original.filter(ImageFilter.GaussianBlur(3))
    assert any("blurred" in r for r in reasons(blurred))
    dark = Image.fromarray((np.asarray(original) * 0.15).astype(np.uint8))
    assert any("too dark" in r for r in reasons(dark, upsample=2))
    assert visage.detect(np.asarray(blurred))[0].quality.score < good.score


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_a_large_photo_is_detected_on_a_bounded_copy_at_its_own_scale(
    people_photos: list[Path],
) -> None:
    """A photo over DETECT_MAX_SIDE is detected on a shrunk copy; the face comes back at its
    place in the original, embedded from the original, within the time budget."""
    pipe = Pipeline()
    original = Image.open(people_photos[0]).convert("RGB")
    small = pipe.embed(np.asarray(original))
    assert len(small) == 1
    scale = 12  # 250 -> 3000 px a side
    assert 250 * scale > DETECT_MAX_SIDE
    large = np.asarray(original.resize((250 * scale, 250 * scale), Image.Resampling.BICUBIC))
    start = time.perf_counter()
    found = pipe.embed(large)
    took = time.perf_counter() - start
    assert len(found) == 1
    assert iou(tuple(v * scale for v in small[0].box), found[0].box) > 0.6, (small[0].box, found[0].box)
    assert small[0].embedding is not None and found[0].embedding is not None
    assert float(small[0].embedding @ found[0].embedding) > 0.99
    assert took < 3.0, f"{took:.2f} s for a 9 MP photo"  # ~0.7 s measured; slack for shared cores
