"""Who a track is: one small contract, answered by a gallery or by an offline snapshot.

:class:`Identifier` is what video processing and the agent call with a track's embedding.
:class:`GalleryIdentifier` asks a :class:`~visage.gallery.Gallery` (every call is audited there);
:class:`visage.edge.snapshot.OfflineGallery` answers from a verified snapshot with no link.
Both decide with the calibrated threshold of the collection's model, never a constant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..decision import OpenSetPoint
from ..gallery import Gallery, Identification


@dataclass(frozen=True)
class Match:
    """A candidate person with their distance and whether it is within the threshold."""

    person_id: str
    display_name: str
    distance: float
    same: bool


@dataclass(frozen=True)
class Identity:
    """The open-set answer for one track: candidates nearest first, ``unknown`` when none is
    within ``threshold``. ``source`` names what answered (``gallery:staff``,
    ``snapshot:staff#12``). ``operating_point``: the rule behind ``threshold`` (target FPIR,
    gallery size, margin, expected FNIR), ``None`` where the answer had none."""

    candidates: tuple[Match, ...]
    unknown: bool
    threshold: float
    source: str
    operating_point: OpenSetPoint | None = None

    @property
    def best(self) -> Match | None:
        """The nearest candidate when within the threshold, else ``None``."""
        return None if self.unknown else self.candidates[0]

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "person_id": best.person_id if best else None,
            "display_name": best.display_name if best else None,
            "unknown": self.unknown,
            "threshold": self.threshold,
            "source": self.source,
            "operating_point": asdict(self.operating_point) if self.operating_point else None,
            "candidates": [
                {
                    "person_id": c.person_id,
                    "display_name": c.display_name,
                    "distance": round(c.distance, 6),
                    "same": c.same,
                }
                for c in self.candidates
            ],
        }


class Identifier(Protocol):
    """Answers 'who is this?' for one L2-normalised embedding ``(128,) float32``."""

    @property
    def threshold(self) -> float: ...

    def identify(self, embedding: npt.NDArray[np.float32], *, k: int = 3) -> Identity: ...


class GalleryIdentifier:
    """An :class:`Identifier` over a local gallery collection; each call is an audited identify."""

    def __init__(self, gallery: Gallery, collection: str, *, purpose: str | None = None) -> None:
        self.gallery = gallery
        self.collection = collection
        self.purpose = purpose
        self._threshold = gallery.calibration(gallery.collection(collection).model_id).threshold

    @property
    def threshold(self) -> float:
        return self._threshold

    def identify(self, embedding: npt.NDArray[np.float32], *, k: int = 3) -> Identity:
        found: Identification = self.gallery.identify(
            self.collection, embedding, k=k, purpose=self.purpose
        )
        return Identity(
            candidates=tuple(
                Match(c.person_id, c.display_name, c.distance, c.same) for c in found.candidates
            ),
            unknown=found.unknown,
            threshold=found.threshold,
            source=f"gallery:{self.collection}",
            operating_point=found.operating_point,
        )
