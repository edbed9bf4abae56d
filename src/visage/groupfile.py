"""A grouping as a document: what ``visage group --json`` prints and what ``--state`` keeps.

The document names each face by its photo (an absolute path) and box, group by group (largest
first) and then the faces that joined no group (``messy``), with the rule and the precision to
expect (``expected``: the expected BCubed precision and false edges per face,
:func:`visage.grouping.expected_precision`). A *state* document adds each face's embedding, so later photos can join the grouping
(:func:`visage.grouping.extend`) and ``visage enroll --from-group`` can name a group's faces.
Embeddings are biometric data: a state file is written owner-only (0600), through a temporary
file in the target's folder renamed over it, never left half written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .decision import OpenSetPoint
from .errors import InputError, NoFace
from .grouping import Grouping, expected_precision
from .names import printable

if TYPE_CHECKING:
    from .pipeline import Face

FORMAT = "visage-groups/1"
"""The ``format`` every grouping document carries; a file without it is not read."""

Box = tuple[int, int, int, int]

MIN_OVERLAP = 0.5
"""Least intersection over union between a face found again and the box a grouping stored for
it: the same detector on the same photo gives the same box (IoU 1.0)."""


@dataclass(frozen=True)
class GroupedFaces:
    """Faces (``photos[i]``, ``boxes[i]``, ``vectors[i]`` when known) and their grouping."""

    photos: list[str]
    boxes: list[Box]
    vectors: npt.NDArray[np.float32] | None
    grouping: Grouping
    model_id: str
    threshold: float
    rule: str
    expected: dict[str, float] | None
    failed: list[str]

    @classmethod
    def of(
        cls,
        faces: list[tuple[str, Box]],
        vectors: npt.NDArray[np.float32],
        grouping: Grouping,
        model_id: str,
        point: OpenSetPoint,
        failed: list[str],
    ) -> GroupedFaces:
        """The grouping of ``faces`` at the edge threshold ``point``."""
        expected = expected_precision(grouping, point.threshold, model_id)
        return cls([p for p, _ in faces], [b for _, b in faces], vectors, grouping, model_id,
                   point.threshold, f"edge {point.describe()}",
                   None if expected is None else expected.document(), failed)  # fmt: skip

    def member(self, row: int, *, embedding: bool = False) -> dict[str, Any]:
        record: dict[str, Any] = {"photo": self.photos[row], "box": list(self.boxes[row])}
        if embedding and self.vectors is not None:
            record["embedding"] = [round(float(v), 7) for v in self.vectors[row]]
        return record

    def group(self, number: int) -> list[tuple[str, Box]]:
        """``(photo, box)`` of each face of group ``number``, counted from 1 as ``visage
        group`` prints them; :class:`InputError` for a number out of range."""
        groups = self.grouping.groups
        if not 1 <= number <= len(groups):
            raise InputError(f"no group {number}: the grouping has groups 1 to {len(groups)}")
        return [(self.photos[r], self.boxes[r]) for r in groups[number - 1]]

    def document(self, *, embeddings: bool = False) -> dict[str, Any]:
        """The JSON document; ``embeddings``: the state form, which later photos can join."""
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "faces": len(self.photos),
            "threshold": self.threshold,
            "rule": self.rule,
            "expected": self.expected,
            "groups": [
                [self.member(r, embedding=embeddings) for r in g] for g in self.grouping.groups
            ],
            "messy": [self.member(r, embedding=embeddings) for r in self.grouping.messy],
            "failed": self.failed,
        }


def read(path: Path) -> GroupedFaces:
    """The grouping saved at ``path`` by ``visage group --json`` or ``--state``; faces are
    numbered group by group, then messy. :class:`InputError` (one line) for a missing or
    unreadable file, or one that is not a grouping document of ours."""
    where = printable(path)
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{where}: not a grouping written by visage group (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{where}: not a grouping written by visage group (no format {FORMAT!r})")
    try:
        return _parse(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: a damaged grouping document ({exc!r})") from None


def _parse(doc: dict[str, Any]) -> GroupedFaces:
    members: list[dict[str, Any]] = []
    groups: list[list[int]] = []
    for g in doc["groups"]:
        groups.append(list(range(len(members), len(members) + len(g))))
        members.extend(g)
    messy = list(range(len(members), len(members) + len(doc["messy"])))
    members.extend(doc["messy"])
    photos = [str(m["photo"]) for m in members]
    boxes: list[Box] = []
    for m in members:
        left, top, right, bottom = (int(v) for v in m["box"])
        boxes.append((left, top, right, bottom))
    vectors = None
    if members and all("embedding" in m for m in members):
        vectors = np.asarray([m["embedding"] for m in members], dtype=np.float32)
        if vectors.ndim != 2 or not np.isfinite(vectors).all():
            raise ValueError("embeddings must be rows of finite numbers")
    return GroupedFaces(photos, boxes, vectors, Grouping(groups, messy), str(doc["model_id"]),
                        float(doc["threshold"]), str(doc["rule"]), _expected(doc.get("expected")),
                        [str(f) for f in doc.get("failed", [])])  # fmt: skip


def _expected(value: Any) -> dict[str, float] | None:
    """The ``expected`` numbers of a document; None where it has none (or an older file's text)."""
    if not isinstance(value, dict):
        return None
    return {str(k): float(v) for k, v in value.items()}


def write_private(dest: Path, data: bytes) -> None:
    """Put ``data`` at ``dest`` owner-only: written to a new 0600 file in ``dest``'s folder
    (:func:`visage.store.private_temporary`), then renamed over ``dest``."""
    from .store import private_temporary

    with private_temporary(dest) as (tmp, fh):
        fh.write(data)
        fh.flush()
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise InputError(f"cannot write {printable(dest)}: {exc.strerror or exc}") from None


def save(dest: Path, grouped: GroupedFaces) -> None:
    """The state form of ``grouped`` (embeddings included) at ``dest``, owner-only."""
    text = json.dumps(grouped.document(embeddings=True), ensure_ascii=False)
    write_private(dest, text.encode("utf-8"))


def face_at(faces: Sequence[Face], box: Box, photo: str) -> int:
    """The index of the face among ``faces`` (found again in ``photo``) whose box best overlaps
    the stored ``box``; :class:`NoFace` when none reaches :data:`MIN_OVERLAP`."""
    from .edge.tracker import iou

    overlaps = [iou(f.box, box) for f in faces]
    best = max(range(len(faces)), key=overlaps.__getitem__, default=None)
    if best is None or overlaps[best] < MIN_OVERLAP:
        seen = f"best overlap {overlaps[best]:.2f}" if best is not None else "no face found"
        raise NoFace(f"{printable(photo)}: no face at {list(box)} any more ({seen}, IoU "
                     f"{MIN_OVERLAP} needed): the photo changed or another detector grouped it")  # fmt: skip
    return best
