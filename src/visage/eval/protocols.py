"""Evaluation protocols: which photos to compare, and the distances the pipeline gives them.

Three file formats, all read with a clear :class:`~visage.errors.InputError` naming the line
that is wrong:

- LFW "View 2" pairs: a first line ``folds<TAB>n``, then per fold ``n`` same-person lines
  ``name i j`` and ``n`` different-person lines ``name1 i name2 j``; photo ``i`` of ``name`` is
  ``root/name/name_%04d.jpg``.
- A pairs CSV ``a,b,same`` (paths relative to ``root``; ``same`` is 1/0 or true/false); the
  person of a photo is its folder's name; pairs are dealt round-robin into folds.
- An identification list: ``person path`` lines (gallery or probes), paths relative to ``root``
  (default: the list's own folder); ``#`` starts a comment.

Photos are embedded once each (:func:`embed_photos`), then scored (:func:`score_pairs`,
:func:`score_identification`). A photo where the detector finds no face is a *failure to
acquire*: it is counted, and :class:`MissingFace` says what happens to it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..decision import distance
from ..errors import InputError
from ..models.base import Box
from ..pipeline import Embedding, ImageResult, Pipeline, nearest_centre
from .metrics import person_distances

Floats = npt.NDArray[np.float64]

#: The box used when no face is detected and the policy is :attr:`MissingFace.CENTRE`, as
#: fractions (left, top, right, bottom) of the photo: the median HOG box of the 593 centred faces
#: in the LFW deep-funneled photos of shared/faces (67, 80, 175, 187 on 250 x 250).
CENTRE_BOX = (0.27, 0.32, 0.70, 0.75)


class MissingFace(StrEnum):
    """What to do with a photo in which the detector finds no face.

    ``count``: the photo has no embedding and every comparison with it is an error (a false
    non-match for a genuine pair, a wrong answer in accuracy, a miss in identification).
    ``centre``: embed the photo's centre box instead (:data:`CENTRE_BOX`), as the LFW protocol
    allows for its centred photos. Either way the failure is counted and reported.
    """

    COUNT = "count"
    CENTRE = "centre"


@dataclass(frozen=True)
class Pair:
    """Two photos to compare, whether they show one person, and the fold the pair is in."""

    a: Path
    b: Path
    same: bool
    fold: int
    person_a: str
    person_b: str


@dataclass(frozen=True)
class Entry:
    """One photo of an identification list: whose it is and where it is."""

    person: str
    path: Path


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def _is_count(text: str) -> bool:
    """Whether ``text`` is a count ``int()`` reads: ASCII digits, at most 9 (``isdigit()``
    alone passes '²', and ``int()`` refuses over 4300 digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 9


def _lfw_photo(root: Path, name: str, number: str, where: str) -> Path:
    if not _is_count(number):
        raise InputError(f"{where}: photo number {number!r} is not a number")
    return root / name / f"{name}_{int(number):04d}.jpg"


def read_lfw_pairs(path: Path, root: Path) -> list[Pair]:
    """Pairs of an LFW View-2 pairs file (format in the module docstring)."""
    lines = [line for line in _lines(path) if line.strip()]
    if not lines:
        raise InputError(f"{path}: empty pairs file")
    head = lines[0].split()
    if len(head) != 2 or not all(_is_count(h) for h in head):
        raise InputError(f"{path}:1: expected 'folds<TAB>pairs', got {lines[0]!r}")
    folds, per_side = int(head[0]), int(head[1])
    if len(lines) - 1 != folds * 2 * per_side:
        raise InputError(
            f"{path}: header promises {folds} folds x {2 * per_side} pairs, "
            f"found {len(lines) - 1} pair lines"
        )
    pairs: list[Pair] = []
    for index, line in enumerate(lines[1:]):
        where = f"{path}:{index + 2}"
        fold, same = index // (2 * per_side), index % (2 * per_side) < per_side
        fields = line.split()
        if same and len(fields) == 3:
            name_a, i, j = fields
            name_b = name_a
        elif not same and len(fields) == 4:
            name_a, i, name_b, j = fields
        else:
            kind = "'name i j'" if same else "'name1 i name2 j'"
            raise InputError(f"{where}: expected {kind}, got {line!r}")
        a, b = _lfw_photo(root, name_a, i, where), _lfw_photo(root, name_b, j, where)
        pairs.append(Pair(a, b, same, fold, name_a, name_b))
    return pairs


_TRUTH = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def read_pairs_csv(path: Path, root: Path, *, folds: int = 10) -> list[Pair]:
    """Pairs of a CSV ``a,b,same`` (an optional header row is skipped), dealt into ``folds``."""
    rows = [row for row in csv.reader(_lines(path)) if row and any(c.strip() for c in row)]
    if rows and rows[0][-1].strip().lower() == "same":
        rows = rows[1:]
    pairs: list[Pair] = []
    for number, row in enumerate(rows):
        if len(row) != 3 or row[2].strip().lower() not in _TRUTH:
            raise InputError(f"{path}: row {number + 1}: expected 'a,b,same', got {row!r}")
        a, b = root / row[0].strip(), root / row[1].strip()
        same = _TRUTH[row[2].strip().lower()]
        pairs.append(Pair(a, b, same, number % folds, a.parent.name, b.parent.name))
    return pairs


def read_pairs(path: Path, root: Path) -> list[Pair]:
    """Pairs of a protocol file: CSV when it ends in ``.csv``, LFW View 2 otherwise.

    Refuses a protocol without both genuine and impostor pairs, which no rate can be drawn from.
    """
    pairs = (
        read_pairs_csv(path, root) if path.suffix.lower() == ".csv" else read_lfw_pairs(path, root)
    )
    if not any(p.same for p in pairs) or all(p.same for p in pairs):
        raise InputError(f"{path}: needs both same-person and different-person pairs")
    return pairs


def pair_photos(pairs: Iterable[Pair]) -> list[Path]:
    """The distinct photos ``pairs`` name, in first-named order: what an evaluation embeds."""
    return list(dict.fromkeys(path for p in pairs for path in (p.a, p.b)))


def all_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """Every pair of distinct photos that ``pairs`` name, labelled by their persons.

    Turns a protocol's few hundred impostor pairs into tens of thousands (445 photos give
    ~97,000), enough to measure FMRs down to ~1e-4; all in one fold, for rates only.
    """
    persons = {p.a: p.person_a for p in pairs} | {p.b: p.person_b for p in pairs}
    photos = sorted(persons)
    return [
        Pair(a, b, persons[a] == persons[b], 0, persons[a], persons[b])
        for i, a in enumerate(photos)
        for b in photos[i + 1 :]
    ]


def read_identification_list(path: Path, root: Path | None = None) -> list[Entry]:
    """Entries of a ``person path`` list; paths relative to ``root`` or the list's folder."""
    base = root if root is not None else path.parent
    entries: list[Entry] = []
    for number, line in enumerate(_lines(path), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split(maxsplit=1)
        if len(fields) != 2:
            raise InputError(f"{path}:{number}: expected 'person path', got {line!r}")
        entries.append(Entry(fields[0], base / fields[1]))
    if not entries:
        raise InputError(f"{path}: no entries")
    return entries


def read_groups(path: Path) -> dict[str, str]:
    """A user-supplied ``person,group`` table (an optional ``person,group`` header is skipped).

    Groups are whatever the user labels them; Visage never infers them from photos.
    """
    table: dict[str, str] = {}
    for number, row in enumerate(csv.reader(_lines(path)), start=1):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"{path}:{number}: expected 'person,group', got {row!r}")
        if number == 1 and [c.strip().lower() for c in row] == ["person", "group"]:
            continue
        table[row[0].strip()] = row[1].strip()
    if not table:
        raise InputError(f"{path}: no 'person,group' rows")
    return table


@dataclass(frozen=True)
class Acquisition:
    """What the pipeline made of one photo.

    ``detected``: how many faces the detector found (0 is a failure to acquire).
    ``embedding``: of the face nearest the photo's centre, of the centre box when nothing was
    detected and the policy is ``centre``, or ``None`` (no face to compare).
    """

    detected: int
    embedding: Embedding | None


@dataclass(frozen=True)
class Embedded:
    """The embeddings of a set of photos, keyed by path, and how they were made."""

    photos: dict[Path, Acquisition]
    model_id: str
    missing_face: MissingFace

    def vector(self, path: Path) -> Embedding | None:
        """The photo's embedding, ``None`` when no face was acquired."""
        return self.photos[path].embedding

    @property
    def n_photos(self) -> int:
        return len(self.photos)

    @property
    def failed(self) -> list[Path]:
        """Photos in which the detector found no face (whatever the policy then did)."""
        return [p for p, a in self.photos.items() if a.detected == 0]

    @property
    def fta_rate(self) -> float:
        """Failure-to-acquire rate: the share of photos with no face detected."""
        return len(self.failed) / self.n_photos if self.photos else 0.0


def centre_box(width: int, height: int) -> Box:
    """:data:`CENTRE_BOX` scaled to a ``width`` x ``height`` photo."""
    left, top, right, bottom = CENTRE_BOX
    return (
        round(left * width),
        round(top * height),
        round(right * width),
        round(bottom * height),
    )


def embed_photos(
    paths: Iterable[Path],
    pipeline: Pipeline,
    *,
    missing_face: MissingFace = MissingFace.COUNT,
    progress: Callable[[], None] | None = None,
) -> Embedded:
    """Embed each distinct photo once; ``progress()`` is called after each one.

    Raises :class:`InputError` before any work if a photo does not exist, and when one cannot
    be decoded: a protocol that names unreadable photos is wrong, not a face-detection failure.
    """
    unique = list(dict.fromkeys(paths))
    absent = [p for p in unique if not p.is_file()]
    if absent:
        raise InputError(f"{len(absent)} photo(s) not found, first: {absent[0]}")
    return acquire(
        zip(unique, pipeline.embed_many(unique)),
        pipeline,
        missing_face=missing_face,
        progress=progress,
    )


def acquire(
    results: Iterable[tuple[Path, ImageResult]],
    pipeline: Pipeline,
    *,
    missing_face: MissingFace = MissingFace.COUNT,
    progress: Callable[[], None] | None = None,
) -> Embedded:
    """Pick each photo's labelled face from the pipeline's results for it.

    :func:`embed_photos` feeds it; call it directly for photos already run through
    :meth:`Pipeline.embed_many` (by the same ``pipeline`` configuration), so they are not
    embedded twice. ``pipeline`` re-reads only photos with several faces or none.
    """
    photos: dict[Path, Acquisition] = {}
    for path, result in results:
        if result.error is not None:
            raise InputError(result.error)
        photos[path] = _acquire(path, result, pipeline, missing_face)
        if progress is not None:
            progress()
    return Embedded(photos, pipeline.model_id, missing_face)


def _acquire(
    path: Path, result: ImageResult, pipeline: Pipeline, missing_face: MissingFace
) -> Acquisition:
    faces = result.faces
    if len(faces) == 1:
        return Acquisition(1, faces[0].embedding)
    if not faces and missing_face is MissingFace.COUNT:
        return Acquisition(0, None)
    if faces:
        width, height = result.size or _size(pipeline.load(path))
        return Acquisition(len(faces), nearest_centre(faces, width, height).embedding)
    image = pipeline.load(path)
    (face,) = pipeline.embed_boxes(image, [centre_box(*_size(image))])
    return Acquisition(0, face.embedding)


def _size(image: npt.NDArray[np.uint8]) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


def _distance_or_nan(a: Embedding | None, b: Embedding | None) -> float:
    return float("nan") if a is None or b is None else distance(a, b)


@dataclass(frozen=True)
class VerificationScores:
    """The distance of every pair (``NaN`` when either photo has no face) and its labels."""

    pairs: tuple[Pair, ...]
    distances: Floats

    @property
    def same(self) -> npt.NDArray[np.bool_]:
        return np.array([p.same for p in self.pairs], dtype=bool)

    @property
    def folds(self) -> npt.NDArray[np.int64]:
        return np.array([p.fold for p in self.pairs], dtype=np.int64)

    @property
    def genuine(self) -> Floats:
        return self.distances[self.same]

    @property
    def impostor(self) -> Floats:
        return self.distances[~self.same]


def score_pairs(pairs: Sequence[Pair], embedded: Embedded) -> VerificationScores:
    """Distances for ``pairs`` from photos already embedded."""
    values = [_distance_or_nan(embedded.vector(p.a), embedded.vector(p.b)) for p in pairs]
    return VerificationScores(tuple(pairs), np.array(values, dtype=np.float64))


@dataclass(frozen=True)
class IdentificationScores:
    """Every probe's distance to every enrolled person (its nearest template).

    ``persons``: the persons with at least one template, the columns of ``matrix (probes,
    persons)``; a probe with no face has a row of ``NaN``. ``unenrolled``: gallery photos with
    no embedding (failures to enrol). A probe of a person listed in the gallery is a mated
    search even when all that person's photos failed to enrol: it is then a miss, not a
    non-mated search.
    """

    gallery: tuple[Entry, ...]
    persons: tuple[str, ...]
    probes: tuple[Entry, ...]
    matrix: Floats
    unenrolled: tuple[Entry, ...]

    @property
    def mated(self) -> npt.NDArray[np.bool_]:
        """Which probes are of a person listed in the gallery; the rest are non-mated."""
        listed = {e.person for e in self.gallery}
        return np.array([p.person in listed for p in self.probes], dtype=bool)

    @property
    def searchable(self) -> npt.NDArray[np.bool_]:
        """Which probes are of a person with a template (a mate that can be found)."""
        enrolled = set(self.persons)
        return np.array([p.person in enrolled for p in self.probes], dtype=bool)


def score_identification(
    gallery: Sequence[Entry], probes: Sequence[Entry], embedded: Embedded
) -> IdentificationScores:
    """Search every probe against the gallery photos' embeddings."""
    enrolled = [(e, embedded.vector(e.path)) for e in gallery]
    templates = [(e.person, v) for e, v in enrolled if v is not None]
    if not templates:
        raise InputError("no gallery photo has a face: nothing is enrolled")
    no_face = np.full(templates[0][1].shape, np.nan, dtype=np.float32)
    vectors = [embedded.vector(p.path) for p in probes]
    probe_rows = np.array([no_face if v is None else v for v in vectors], dtype=np.float32)
    persons, matrix = person_distances(
        probe_rows, np.array([v for _, v in templates]), [person for person, _ in templates]
    )
    return IdentificationScores(
        gallery=tuple(gallery),
        persons=tuple(persons),
        probes=tuple(probes),
        matrix=matrix,
        unenrolled=tuple(e for e, v in enrolled if v is None),
    )
