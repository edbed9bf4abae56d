"""Synthetic embeddings for gallery tests: random unit vectors and noisy copies of them."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from visage.decision import Calibration, normalize
from visage.gallery import Gallery

MODEL = "synthetic-128"
CALIBRATION = Calibration(
    model_id=MODEL,
    threshold=0.6,
    method="fixed",
    source="tests: random unit vectors are ~1.41 apart; noisy copies ~0.1-0.3",
    created="2026-11-29",
    n_genuine=0,
    n_impostor=0,
)


def unit_vectors(n: int, seed: int, dim: int = 128) -> npt.NDArray[np.float32]:
    """``n`` random unit vectors (independent ones are ~1.41 apart in 128-d)."""
    rng = np.random.default_rng(seed)
    return normalize(rng.standard_normal((n, dim)).astype(np.float32))


def near(vector: npt.NDArray[np.float32], scale: float, seed: int) -> npt.NDArray[np.float32]:
    """A noisy copy of ``vector`` (``scale`` 0.02 puts it ~0.23 away: the same person)."""
    rng = np.random.default_rng(seed)
    return normalize(vector + scale * rng.standard_normal(vector.shape).astype(np.float32))


def consented_person(g: Gallery, name: str, collection: str = "people") -> str:
    """Add a person with a valid consent record; returns the person id."""
    person = g.add_person(collection, name, external_id=name.lower())
    g.grant_consent(collection, person.id, basis="consent", granted_by=name)
    return person.id


def write_export(
    path: Path,
    persons: int,
    *,
    seed: int = 0,
    header: dict[str, object] | None = None,
    templates: bool = True,
) -> Path:
    """A ``visage export`` file of ``persons`` consented persons with one random dlib-sized
    template each, written as the exporter writes it (``header`` overrides header fields).
    ``templates=False``: bare persons, no consent or template (a quarter of the import time)."""
    vectors = unit_vectors(min(persons, 10_000) if templates else 1, seed)
    with path.open("w", encoding="utf-8") as out:
        head = {
            "format": "visage-collection",
            "version": 1,
            "collection": "imported",
            "model_id": "dlib_resnet_v1",
            "dim": 128,
            "persons": persons,
        }
        out.write(json.dumps(head | (header or {})) + "\n")
        for i in range(persons):
            out.write(
                json.dumps(
                    {
                        "person": {
                            "id": f"p{seed}x{i:08d}",
                            "display_name": f"Person {i}",
                            "external_id": f"ext-{i}",
                            "metadata": {},
                            "created_at": None,
                        },
                        "consents": [
                            {
                                "basis": "consent",
                                "purpose": None,
                                "granted_by": f"Person {i}",
                                "granted_at": "2026-01-01T00:00:00+00:00",
                                "expires_at": None,
                                "revoked_at": None,
                                "revoked_by": None,
                                "revoke_reason": None,
                            }
                        ]
                        if templates
                        else [],
                        "templates": [
                            {
                                "embedding": base64.b64encode(
                                    vectors[i % len(vectors)].astype("<f4").tobytes()
                                ).decode(),
                                "model_id": "dlib_resnet_v1",
                                "quality": None,
                                "source_sha256": f"{seed:04d}{i:060d}",
                                "created_at": None,
                            }
                        ]
                        if templates
                        else [],
                    }
                )
                + "\n"
            )
    return path


_PEAK = """
import atexit, runpy, sys
def peak():
    status = open("/proc/self/status").read()
    sys.stderr.write("\\n" + next(l for l in status.splitlines() if l.startswith("VmHWM")) + "\\n")
atexit.register(peak)
sys.argv[0] = "visage"
runpy.run_module("visage", run_name="__main__")
"""


def visage_peak_command(*args: str) -> list[str]:
    """``python -m visage ARGS`` that ends by writing its peak RSS to stderr (read it with
    :func:`peak_kib`): its own high-water mark after exec (``VmHWM``), unlike ``wait4``'s
    ``ru_maxrss``, which counts the forked parent's pages too."""
    return [sys.executable, "-c", _PEAK, *args]


def peak_kib(stderr: str) -> int:
    """The peak RSS in KiB that a :func:`visage_peak_command` wrote last on ``stderr``."""
    return int(stderr.strip().splitlines()[-1].split()[1])


def visage_peak_kib(*args: str) -> tuple[int, int]:
    """Exit status and peak RSS in KiB of ``python -m visage ARGS``."""
    done = subprocess.run(
        visage_peak_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, check=False,
    )  # fmt: skip
    return done.returncode, peak_kib(done.stderr)
