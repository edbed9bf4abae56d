"""Open-set calibration (the shipped data/open_set.json) and its cross-validated check.

    .venv/bin/python benchmarks/open_set.py calibrate [--faces DIR] [--cache FILE]
    .venv/bin/python benchmarks/open_set.py measure [--faces DIR] [--cache FILE] [--json]

``calibrate`` embeds every photo of ``calibration/`` (400 people, 2,000 strangers less the 73
that are also distractors; HOG, the labelled face nearest the centre) and writes, for
``dlib_resnet_v1``, the per-comparison FMR of its impostor pairs and the rank-1 stranger
distances for galleries of 1 to ~2,000 persons: for each stranger probe (every photo, against
one photo of every other identity) the exact chance that a random gallery of n of those persons
holds one at or below a distance (hypergeometric), so no gallery has to be sampled. ``measure``
splits calibration/ in two by identity, calibrates on one half and measures the other half with
people/ and distractors/ (disjoint data), both ways: FPIR and FNIR of a 1%-FPIR collection at
N = 60 ... 1,000 persons (one template each, strangers drawn 10 times), against the fixed
per-comparison threshold. Embeddings are cached (``--cache``): ~4 min on 2 cores the first time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from machine import default_faces

from visage.decision import (
    MIN_TAIL_COUNT,
    OpenSetCalibration,
    default_calibration,
    open_set_threshold,
)

Floats = npt.NDArray[np.float64]
SIZES = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500,
         2000, 2500, 3000)  # fmt: skip
FPIRS = (0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
GRID = np.linspace(0.1, 0.8, 1401)
DATA = Path(__file__).resolve().parents[1] / "src" / "visage" / "data" / "open_set.json"


def identity(rel: str) -> str:
    """``people/Name/Name_0001.jpg`` and ``strangers/Name_0001.jpg`` are both ``Name``."""
    path = Path(rel)
    return path.parent.name if path.parent.name not in ("strangers", "distractors") else (
        path.stem.rsplit("_", 1)[0]
    )


def embed_all(faces: Path, cache: Path) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Every photo of calibration/, people/ and distractors/ with a face, embedded once."""
    if cache.exists():
        data = np.load(cache)
        ok = data["ok"]
        return [str(p) for p in data["paths"][ok]], data["vectors"][ok]
    from visage.eval.protocols import acquire
    from visage.pipeline import Pipeline

    paths = (sorted((faces / "calibration" / "people").glob("*/*.jpg"))
             + sorted((faces / "calibration" / "strangers").glob("*.jpg"))
             + sorted((faces / "people").glob("*/*.jpg"))
             + sorted((faces / "distractors").glob("*.jpg")))  # fmt: skip
    pipe, start, done = Pipeline(), time.monotonic(), [0]

    def tick() -> None:
        done[0] += 1
        if done[0] % 250 == 0:
            print(f"embedded {done[0]}/{len(paths)} ({time.monotonic() - start:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip

    emb = acquire(zip(paths, pipe.embed_many(paths, workers=2)), pipe, progress=tick)
    ok = np.array([emb.photos[p].embedding is not None for p in paths])
    vectors = np.stack([v if (v := emb.photos[p].embedding) is not None
                        else np.zeros(128, np.float32) for p in paths])  # fmt: skip
    rel = np.array([str(p.relative_to(faces)) for p in paths])
    np.savez(cache, paths=rel, vectors=vectors, ok=ok)
    return [str(p) for p in rel[ok]], vectors[ok]


def distance_matrix(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> Floats:
    """Unit-sphere Euclidean distances, as :func:`visage.decision.distances` computes them."""
    cos = a.astype(np.float64) @ b.astype(np.float64).T
    out: Floats = np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, 4.0))
    return out


def calibrate(vectors: npt.NDArray[np.float32], labels: list[str], source: str) -> dict[str, Any]:
    """The open-set record (see :class:`visage.decision.OpenSetCalibration`) of these photos."""
    lab = np.asarray(labels)
    dist = distance_matrix(vectors, vectors)
    other = lab[:, None] != lab[None, :]
    upper = np.triu(other, 1)
    impostor = np.sort(dist[upper])
    n_imp = impostor.size
    fmr = []
    for level in 10.0 ** np.arange(-8, -0.99, 0.125):
        count = int(np.ceil(level * n_imp))
        if count >= MIN_TAIL_COUNT:
            fmr.append((float(f"{level:.4g}"), round(float(impostor[count - 1]), 6)))
    low = np.asarray(fmr[:17])  # the lowest two decades
    slope, intercept = np.polyfit(low[:, 1], np.log10(low[:, 0]), 1)
    # Galleries hold distinct persons: each is drawn from one photo per identity (the first), and
    # every photo probes them (against the identities not its own).
    _, first = np.unique(lab, return_index=True)
    pool = np.zeros(len(lab), bool)
    pool[first] = True
    rows = [np.sort(dist[i][other[i] & pool]) for i in range(len(lab))]
    m = np.asarray([r.size for r in rows], np.float64)[:, None]
    k = np.stack([np.searchsorted(r, GRID, side="right") for r in rows]).astype(np.float64)
    sizes = [n for n in SIZES if n <= m.min()]
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, int(m.max()) + 1)))])
    free = (m - k).astype(np.int64)
    mi = m.astype(np.int64)
    rank1 = []
    for n in sizes:
        ok = free >= n
        log_none = np.where(  # log C(free, n) / C(m, n): no photo of the n within the distance
            ok,
            log_fact[free] - log_fact[np.where(ok, free - n, 0)] - log_fact[mi] + log_fact[mi - n],
            -np.inf,
        )
        fpir = np.mean(-np.expm1(log_none), axis=0)  # P(nearest of n random photos <= GRID)
        rank1.append([round(float(np.interp(t, fpir, GRID)), 6) for t in FPIRS])
    return {
        "model_id": "dlib_resnet_v1",
        "source": source,
        "created": time.strftime("%Y-%m-%d"),
        "n_impostor": int(n_imp),
        "n_probes": len(lab),
        "fmr": fmr,
        "tail": [round(float(intercept), 6), round(float(slope), 6)],
        "sizes": sizes,
        "fpirs": list(FPIRS),
        "rank1": rank1,
    }


def measure_fold(
    cal: OpenSetCalibration,
    mated: dict[str, npt.NDArray[np.float32]],
    strangers: npt.NDArray[np.float32],
    sizes: list[int],
    target: float,
    draws: int = 10,
) -> list[dict[str, Any]]:
    """FPIR/FNIR at each gallery size: the persons of ``mated`` (first photo enrolled, the rest
    probes; people/ first) plus single-photo persons drawn at random from ``strangers``; the
    other strangers probe. Counts are pooled over ``draws`` random draws (seed 0)."""
    names = list(mated)
    fixed = default_calibration("dlib_resnet_v1").threshold
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        persons = names[:size]
        extra = max(0, size - len(persons))
        probes = [(i, v) for i, p in enumerate(persons) for v in mated[p][1:]]
        mated_vec = np.stack([v for _, v in probes])
        truth = np.asarray([i for i, _ in probes])
        point = open_set_threshold(cal, target, size, size)
        named = {"rule": [0, 0], "fixed": [0, 0]}
        for _ in range(draws if extra else 1):
            order = rng.permutation(len(strangers))
            gallery = np.concatenate([np.stack([mated[p][0] for p in persons]),
                                      strangers[order[:extra]]])  # fmt: skip
            d_mated = distance_matrix(mated_vec, gallery)
            d_stranger = distance_matrix(strangers[order[extra:]], gallery).min(axis=1)
            rank1 = d_mated.argmin(axis=1) == truth
            best = d_mated.min(axis=1)
            for label, thr in (("rule", point.threshold), ("fixed", fixed)):
                named[label][0] += int(np.sum(d_stranger <= thr))
                named[label][1] += int(np.sum(~(rank1 & (best <= thr))))
        runs = draws if extra else 1
        row: dict[str, Any] = {"persons": size, "mated": len(probes),
                               "strangers": len(strangers) - extra, "rank1": float(rank1.mean())}
        for label, thr in (("rule", point.threshold), ("fixed", fixed)):
            row[label] = {"threshold": round(thr, 4),
                          "fpir": named[label][0] / (runs * (len(strangers) - extra)),
                          "fnir": named[label][1] / (runs * len(probes))}  # fmt: skip
        row["rule"] |= {"supported": point.supported, "basis": point.basis}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=("calibrate", "measure"))
    parser.add_argument("--faces", type=Path, default=Path(default_faces()))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/visage-open-set-embeddings.npz"))
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    paths, vectors = embed_all(args.faces, args.cache)
    labels = [identity(p) for p in paths]
    # 73 of the 150 distractors are also calibration strangers (the same photo): calibrate only on
    # identities absent from people/ and distractors/, so tests measuring those stay disjoint.
    tested = {labels[i] for i, p in enumerate(paths) if not p.startswith("calibration/")}
    people = {labels[i] for i, p in enumerate(paths) if p.startswith("people/")}
    calib = [i for i, p in enumerate(paths) if p.startswith("calibration/") and labels[i] not in tested]
    if args.command == "calibrate":
        record = calibrate(vectors[calib], [labels[i] for i in calib],
                           f"calibration/ of shared/faces (LFW) less the identities of people/ "
                           f"and distractors/: {len(calib)} photos of "
                           f"{len({labels[i] for i in calib})} identities, HOG detector")  # fmt: skip
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items())
        DATA.write_text("[\n {\n" + lines + "\n }\n]\n", encoding="utf-8")
        print(f"wrote {DATA}: {record['n_impostor']} impostor pairs, {record['n_probes']} probes")
        return
    idents = sorted({labels[i] for i in calib})
    fold_of = {name: j % 2 for j, name in enumerate(idents)}
    results = {}
    for fold in (0, 1):
        own = [i for i in calib if fold_of[labels[i]] == fold]
        cal = OpenSetCalibration.from_dict(calibrate(vectors[own], [labels[i] for i in own], "fold"))
        held = [i for i, p in enumerate(paths)
                if not p.startswith("calibration/") or fold_of.get(labels[i]) == 1 - fold]  # fmt: skip
        groups: dict[str, dict[str, int]] = {}
        for i in held:  # a distractor that is also a calibration stranger: one photo, once
            groups.setdefault(labels[i], {}).setdefault(Path(paths[i]).name, i)
        first = sorted(groups, key=lambda n: (n not in people, n))
        mated = {n: vectors[list(groups[n].values())] for n in first if len(groups[n]) >= 2}
        strangers = vectors[[next(iter(ix.values())) for ix in groups.values() if len(ix) == 1]]
        results[f"calibrated on half {fold}"] = measure_fold(
            cal, mated, strangers, [60, 200, 260, 460, 700, 1000], args.target
        )
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for name, rows in results.items():
        print(name)
        for r in rows:
            rule, fixed = r["rule"], r["fixed"]
            print(f"  N={r['persons']:5d} mated={r['mated']:4d} strangers={r['strangers']:4d} "
                  f"rank1={r['rank1']:.3f} | rule thr {rule['threshold']:.4f} "
                  f"({rule['basis']}) FPIR {rule['fpir']:.4f} FNIR {rule['fnir']:.3f} | "
                  f"fixed {fixed['threshold']:.4f} FPIR {fixed['fpir']:.4f} "
                  f"FNIR {fixed['fnir']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
