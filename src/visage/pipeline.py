"""The face pipeline: decode → detect → landmarks → align → quality → embed, batched.

:class:`Pipeline` wires runtimes (chosen by name) into that one direction of flow and returns
:class:`Face` records, which everything downstream speaks.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from . import align as _align
from .decision import normalize
from .errors import AmbiguousFace, InputError, NoFace, VisageError
from .imageio import DEFAULT_MAX_PIXELS, Source, decode, read_bytes, shrink, source_hash
from .models import make_detector, make_embedder, make_landmarker
from .models.base import Box, Detection, Embedder, Image, clip_box
from .names import utf8_text
from .quality import DEFAULT_POLICY, Quality, QualityPolicy, assess

log = logging.getLogger(__name__)

Embedding = npt.NDArray[np.float32]

DETECT_MAX_SIDE = 2048
"""The longest side the detector ever sees, upsampling included: HOG takes ~0.3 s there on
this project's 2-core machine, so detection costs no more for any photo (it was 15 s and
3.6 GB for a 4000x4000 PNG with one upsampling; decoding is bounded by the pixel limit).
Smaller photos are upsampled only while they stay within it; larger ones are detected on a
copy shrunk to it, and landmarks, chips and boxes come from the original."""


@dataclass(frozen=True)
class Face:
    """One face in one image.

    ``box`` is ``(left, top, right, bottom)`` clipped to the image; ``landmarks`` ``(5, 2)``
    float32 (x, y); ``score`` the detector's raw score; ``embedding`` ``(128,)`` float32,
    L2-normalised, or ``None`` when only detection was asked for; ``model_id`` names the
    embedding model (thresholds are only valid for the model they were calibrated on).
    """

    box: Box
    landmarks: npt.NDArray[np.float32]
    score: float
    quality: Quality
    embedding: Embedding | None = None
    model_id: str | None = None

    @property
    def area(self) -> int:
        return max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0)

    def centre_offset(self, width: int, height: int) -> float:
        """Pixels from the box centre to the centre of a ``width`` x ``height`` image."""
        left, top, right, bottom = self.box
        return float(np.hypot((left + right - width) / 2, (top + bottom - height) / 2))


def nearest_centre(faces: Sequence[Face], width: int, height: int) -> Face:
    """The face nearest the image centre: the labelled person of LFW-style photos, or the one a
    caller means by ``"center"``. ``faces`` must not be empty."""
    return min(faces, key=lambda f: f.centre_offset(width, height))


FacePick = int | Literal["largest", "center"] | None
"""Which face of a photo: an index (0 = largest), ``"largest"`` or ``"center"``; ``None``
refuses a photo with several faces. One rule for enroll, identify, verify and compare."""


def parse_face_pick(text: str | None) -> FacePick:
    """A :data:`FacePick` from a CLI option or query parameter (``largest``, ``center``, ``2``)."""
    if text is None or text in ("largest", "center"):
        return text  # type: ignore[return-value]
    try:
        return int(text)
    except ValueError:
        raise InputError(f"face must be largest, center or a number, not {text!r}") from None


def pick_face(faces: Sequence[Face], face: FacePick, width: int, height: int, name: str) -> Face:
    """The face ``face`` picks from ``faces`` (largest first) of a ``width`` x ``height`` photo
    called ``name`` in messages: :class:`NoFace`, :class:`AmbiguousFace` (several, no pick) or
    :class:`InputError` (no such index) otherwise."""
    if not faces:
        raise NoFace(f"{name}: no face found")
    if face is None:
        if len(faces) > 1:
            raise AmbiguousFace(
                f"{name}: {len(faces)} faces found; pick one (face index, 0 = largest, "
                "or 'center')"
            )
        return faces[0]
    if face == "largest":
        return faces[0]
    if face == "center":
        return nearest_centre(faces, width, height)
    if isinstance(face, int) and 0 <= face < len(faces):
        return faces[face]
    raise InputError(f"{name}: face {face!r} does not exist ({len(faces)} faces found)")


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one source in a batch: its faces, or the error that stopped it.

    ``source`` is the path as :func:`visage.names.utf8_text` (a name that is not UTF-8
    escaped), so the result can be stored and printed."""

    source: str
    faces: tuple[Face, ...] = ()
    sha256: str | None = None
    error: str | None = None
    size: tuple[int, int] | None = None  # (width, height) of the decoded image

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Prepared:
    """A photo read, decoded, detected and aligned (:meth:`Pipeline.prepare`), its chips
    waiting for :meth:`Pipeline.finish` to embed them: the unit handed from the CPU stage to the
    embedding stage, by the local pool within one process or by Ray between two."""

    source: str
    sha256: str
    faces: tuple[Face, ...]
    chips: npt.NDArray[np.uint8]
    size: tuple[int, int]


def threads_per_worker(workers: int) -> int:
    """Runtime threads for each of ``workers`` processes on this machine, so that workers x
    threads <= cores (at least one): a pool's or a server's parallelism is its processes, and
    more threads than cores only compete (onnxruntime's idle threads spin)."""
    return max(1, (os.cpu_count() or 1) // workers)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything needed to rebuild a pipeline (in a worker process, say)."""

    detector: str = "hog"
    upsample: int = 1
    tta: bool = False
    runtime: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    policy: QualityPolicy = DEFAULT_POLICY
    threads: int | None = None
    embedder: Embedder | None = None


class Pipeline:
    """detect → landmarks → align → quality → embed over images, with batching.

    ``detector``: ``hog`` (fast, frontal; ~20 ms/photo) or ``cnn`` (MMOD, finds profiles and
    small faces; ~2 s/photo on CPU with dlib). ``upsample``: doubles the image N times before
    detection to find faces below ~80 px (each step ~4x slower), never past
    :data:`DETECT_MAX_SIDE`. ``tta``: embed the chip and its
    mirror and average — twice the embedding cost (see docs/pipeline.md for its effect).
    ``runtime``: ``auto`` (onnx when onnxruntime is installed, else dlib), ``onnx`` or
    ``dlib``; ``threads`` caps the runtime's threads; ``embedder`` injects a prepared embedder
    (e.g. an INT8 :class:`~visage.models.onnx_runtime.OnnxEmbedder`). Models load on first use.
    """

    def __init__(
        self,
        *,
        detector: str = "hog",
        upsample: int = 1,
        tta: bool = False,
        runtime: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        policy: QualityPolicy = DEFAULT_POLICY,
        threads: int | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.config = PipelineConfig(
            detector, upsample, tta, runtime, max_pixels, policy, threads, embedder
        )
        self.detector = make_detector(detector, runtime=runtime, threads=threads)
        self.landmarker = make_landmarker(5)
        self.embedder = embedder if embedder is not None else make_embedder(runtime, threads=threads)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> Pipeline:
        return cls(**{f.name: getattr(config, f.name) for f in fields(config)})

    @property
    def model_id(self) -> str:
        """Id of the embedding model; TTA embeddings are a different model for calibration."""
        base = self.embedder.model_id
        return f"{base}+flip" if self.config.tta else base

    def load(self, src: Source) -> Image:
        """Decode a path or encoded bytes with this pipeline's pixel limit."""
        data, name = read_bytes(src)
        return decode(data, max_pixels=self.config.max_pixels, source=name)

    def _detections(self, image: Image) -> list[Detection]:
        """Detections in ``image``'s coordinates, found on at most :data:`DETECT_MAX_SIDE` a side.

        A detector with ``tiled = True`` (BlazeFace) bounds its own work on a large photo, so it
        sees the photo at full size: shrinking 4000x3000 to 2048 would halve a 40-pixel face.
        """
        if getattr(self.detector, "tiled", False):
            return self.detector.detect(image, upsample=self.config.upsample)
        height, width = image.shape[:2]
        side = max(height, width)
        upsample = self.config.upsample
        while upsample > 0 and side << upsample > DETECT_MAX_SIDE:
            upsample -= 1
        if side <= DETECT_MAX_SIDE:
            return self.detector.detect(image, upsample=upsample)
        small = shrink(image, DETECT_MAX_SIDE)
        sx, sy = width / small.shape[1], height / small.shape[0]
        found = []
        for d in self.detector.detect(small, upsample=0):
            left, top, right, bottom = d.landmark_rect
            rect = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
            found.append(Detection(box=clip_box(rect, image.shape), score=d.score, rect=rect))
        return found

    def _measure(self, image: Image, detections: Sequence[Detection]) -> tuple[list[Face], Image]:
        """Landmarks, chips and quality for detections, in their order."""
        marks = self.landmarker.landmarks(image, [d.landmark_rect for d in detections])
        chips = _align.align_many(image, marks)
        faces = [
            Face(
                box=d.box,
                landmarks=lm,
                score=d.score,
                quality=assess(chip, d.box, lm, self.config.detector, d.score, self.config.policy),
            )
            for d, lm, chip in zip(detections, marks, chips)
        ]
        return faces, chips

    def _faces(self, image: Image, detections: Sequence[Detection]) -> tuple[list[Face], Image]:
        """:meth:`_measure`, largest face first."""
        faces, chips = self._measure(image, detections)
        order = sorted(range(len(faces)), key=lambda i: -faces[i].area)
        return [faces[i] for i in order], chips[order] if len(order) else chips

    def detect(self, image: Image) -> list[Face]:
        """Faces with box, landmarks and quality (no embedding), largest first."""
        return self._faces(image, self._detections(image))[0]

    def embed_chips(self, chips: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """L2-normalised embeddings ``(n, 128)`` for aligned chips, with TTA when configured."""
        raw = self.embedder.embed_chips(chips)
        if self.config.tta and len(chips):
            raw = raw + self.embedder.embed_chips(np.ascontiguousarray(chips[:, :, ::-1]))
        return normalize(raw)

    def _with_embeddings(self, faces: list[Face], chips: npt.NDArray[np.uint8]) -> list[Face]:
        vectors = self.embed_chips(chips)
        return [replace(f, embedding=v, model_id=self.model_id) for f, v in zip(faces, vectors)]

    def embed(self, image: Image) -> list[Face]:
        """Every face in ``image`` with its embedding, largest first."""
        faces, chips = self._faces(image, self._detections(image))
        return self._with_embeddings(faces, chips)

    def embed_boxes(self, image: Image, boxes: Sequence[Box]) -> list[Face]:
        """Embed faces at known boxes (skips detection; e.g. a tracker's boxes or LFW's centre box).

        Order follows ``boxes``; each face's ``score`` is 0 since no detector vouched for it.
        """
        faces, chips = self._measure(image, [Detection(box=b, score=0.0) for b in boxes])
        return self._with_embeddings(faces, chips)

    def prepare(self, src: str) -> Prepared | ImageResult:
        """Read, decode, detect and align one file: its faces and chips waiting to be embedded,
        or the :class:`ImageResult` holding the error that stopped it (a bad file)."""
        try:
            data, name = read_bytes(src)
            image = decode(data, max_pixels=self.config.max_pixels, source=name)
            faces, chips = self._faces(image, self._detections(image))
        except VisageError as exc:
            return ImageResult(source=utf8_text(src), error=str(exc))
        size = (int(image.shape[1]), int(image.shape[0]))
        return Prepared(src, source_hash(data), tuple(faces), chips, size)

    def finish(self, items: Sequence[Prepared | ImageResult]) -> list[ImageResult]:
        """Embed the chips of all prepared photos in one batched call; results in their order
        (an error result passes through)."""
        pending = [p for p in items if isinstance(p, Prepared)]
        all_chips = [c for p in pending for c in p.chips]
        vectors = self.embed_chips(np.stack(all_chips)) if all_chips else np.empty((0, 128), np.float32)
        done: dict[int, ImageResult] = {}
        at = 0
        for p in pending:
            embedded = tuple(
                replace(f, embedding=vectors[at + i], model_id=self.model_id)
                for i, f in enumerate(p.faces)
            )
            at += len(p.faces)
            done[id(p)] = ImageResult(source=utf8_text(p.source), faces=embedded, sha256=p.sha256,
                                      size=p.size)
        return [done[id(p)] if isinstance(p, Prepared) else p for p in items]

    def _process_chunk(self, sources: Sequence[str]) -> list[ImageResult]:
        """Prepare a chunk of files, then embed all their chips in one batch."""
        return self.finish([self.prepare(s) for s in sources])

    def embed_many(
        self,
        sources: Iterable[str | Path],
        *,
        workers: int = 1,
        chunk: int = 16,
        progress: Callable[[ImageResult], None] | None = None,
    ) -> Iterator[ImageResult]:
        """Embed many files; yields one :class:`ImageResult` per source, in order.

        A bad file yields its error and the batch goes on. ``workers > 1`` uses a process pool
        started with ``spawn`` (safe beside runtime thread pools, so a script calling this
        needs the usual ``if __name__ == "__main__":`` guard); each worker loads its own
        models. Within a chunk all faces are embedded in one batched call.
        """
        paths = [str(s) for s in sources]
        chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
        if workers <= 1:
            batches: Iterable[list[ImageResult]] = map(self._process_chunk, chunks)
            yield from _flatten(batches, progress)
            return
        ctx = multiprocessing.get_context("spawn")
        threads = self.config.threads or threads_per_worker(workers)
        config = replace(self.config, threads=threads)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(config,)) as pool:
            yield from _flatten(pool.map(_worker_chunk, chunks), progress)


def _flatten(
    batches: Iterable[list[ImageResult]], progress: Callable[[ImageResult], None] | None
) -> Iterator[ImageResult]:
    for batch in batches:
        for result in batch:
            if progress is not None:
                progress(result)
            yield result


_worker_pipeline: Pipeline | None = None


def _init_worker(config: PipelineConfig) -> None:
    global _worker_pipeline
    _worker_pipeline = Pipeline.from_config(config)


def _worker_chunk(sources: list[str]) -> list[ImageResult]:
    assert _worker_pipeline is not None, "worker used before its initializer ran"
    return _worker_pipeline._process_chunk(sources)
