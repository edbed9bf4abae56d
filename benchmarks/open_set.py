"""Open-set calibration (the shipped data/open_set.json) and its cross-validated check.

    .venv/bin/python benchmarks/open_set.py calibrate [--faces DIR] [--cache FILE]
    .venv/bin/python benchmarks/open_set.py measure [--faces DIR] [--cache FILE] [--json] [--tta]
    .venv/bin/python benchmarks/open_set.py compare [--faces DIR] [--cache FILE] [--tta]

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
``--tta``: embed with mirrored-chip averaging (``dlib_resnet_v1+flip``; its own cache file):
``calibrate --tta`` writes that model's record beside the default's, ``measure --tta`` checks it.
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
    OpenSetCalibration,
    default_calibration,
    identify_point,
    open_set_threshold,
)
from visage.eval.open_set import calibrate, distance_matrix

Floats = npt.NDArray[np.float64]
MODEL = "dlib_resnet_v1"
DATA = Path(__file__).resolve().parents[1] / "src" / "visage" / "data" / "open_set.json"


def identity(rel: str) -> str:
    """``people/Name/Name_0001.jpg`` and ``strangers/Name_0001.jpg`` are both ``Name``."""
    path = Path(rel)
    return path.parent.name if path.parent.name not in ("strangers", "distractors") else (
        path.stem.rsplit("_", 1)[0]
    )


def cache_file(cache: Path | None, tta: bool) -> Path:
    """Where :func:`embed_all` keeps its embeddings (``--cache``, else one file per variant)."""
    if cache is not None:
        return cache
    return Path(f"/tmp/visage-open-set-embeddings{'-tta' if tta else ''}.npz")


def embed_all(
    faces: Path, cache: Path, tta: bool = False
) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Every photo of calibration/, people/ and distractors/ with a face, embedded once
    (``tta``: averaged with the mirrored chip)."""
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
    pipe, start, done = Pipeline(tta=tta), time.monotonic(), [0]

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
        margin = identify_point(cal, target, size, size)
        bars = {"rule": np.vectorize(point.threshold_for), "fixed": lambda d2: fixed,
                "margin": np.vectorize(margin.threshold_for)}  # fmt: skip
        named = {label: [0, 0] for label in bars}
        for _ in range(draws if extra else 1):
            order = rng.permutation(len(strangers))
            gallery = np.concatenate([np.stack([mated[p][0] for p in persons]),
                                      strangers[order[:extra]]])  # fmt: skip
            to_mated = distance_matrix(mated_vec, gallery)
            rank1 = to_mated.argmin(axis=1) == truth
            d_mated = np.sort(to_mated, axis=1)[:, :2]
            d_stranger = np.sort(distance_matrix(strangers[order[extra:]], gallery), axis=1)[:, :2]
            for label, bar in bars.items():
                named[label][0] += int(np.sum(d_stranger[:, 0] <= bar(d_stranger[:, 1])))
                named[label][1] += int(np.sum(~(rank1 & (d_mated[:, 0] <= bar(d_mated[:, 1])))))
        runs = draws if extra else 1
        row: dict[str, Any] = {"persons": size, "mated": len(probes),
                               "strangers": len(strangers) - extra, "rank1": float(rank1.mean())}
        for label, thr in (("rule", point.threshold), ("fixed", fixed),
                           ("margin", margin.margin or 0.0)):  # fmt: skip
            row[label] = {"threshold": round(thr, 4),
                          "fpir": named[label][0] / (runs * (len(strangers) - extra)),
                          "fnir": named[label][1] / (runs * len(probes))}  # fmt: skip
        row["rule"] |= {"supported": point.supported, "basis": point.basis}
        row["margin"] |= {"expected_fnir": margin.expected_fnir, "basis": margin.basis}
        rows.append(row)
    return rows


def compare_fold(
    mated: dict[str, npt.NDArray[np.float32]],
    strangers: npt.NDArray[np.float32],
    cohort: npt.NDArray[np.float32],
    sizes: list[int],
    draws: int = 5,
) -> list[dict[str, Any]]:
    """Decision rules compared at thresholds chosen on the test itself (an oracle: each rule's
    best case), FNIR at FPIR 1% and 0.1%: the nearest distance, the margin s1 - w * s2 for
    several w, adaptive S-norm (each score normalised by the probe's and the template's top-50
    similarities to ``cohort``, faces enrolled nowhere) and S-norm with the margin. Galleries as
    in :func:`measure_fold`, one template each."""
    names, rng, rows = list(mated), np.random.default_rng(0), []

    def top_cohort(x: npt.NDArray[np.float32]) -> tuple[Floats, Floats]:
        top = -np.partition(-(x.astype(np.float64) @ cohort.T.astype(np.float64)), 50, axis=1)[:, :50]
        return top.mean(axis=1), top.std(axis=1)

    for size in sizes:
        persons = names[:size]
        extra = max(0, size - len(persons))
        probes = [(i, v) for i, p in enumerate(persons) for v in mated[p][1:]]
        mated_vec, truth = np.stack([v for _, v in probes]), np.asarray([i for i, _ in probes])
        fnir: dict[str, list[tuple[float, float]]] = {}
        for _ in range(draws if extra else 1):
            order = rng.permutation(len(strangers))
            gallery = np.concatenate([np.stack([mated[p][0] for p in persons]),
                                      strangers[order[:extra]]])  # fmt: skip
            probe_sets = {"mated": mated_vec, "strangers": strangers[order[extra:]]}
            g_mu, g_sd = top_cohort(gallery)
            scored: dict[str, dict[str, tuple[Floats, Any]]] = {}
            for kind, vec in probe_sets.items():
                raw = vec.astype(np.float64) @ gallery.T.astype(np.float64)
                p_mu, p_sd = top_cohort(vec)
                snorm = 0.5 * ((raw - p_mu[:, None]) / p_sd[:, None] + (raw - g_mu) / g_sd)
                for family, sims in (("", raw), ("S-norm ", snorm)):
                    order2 = np.argsort(-sims, axis=1)[:, :2]
                    top = np.take_along_axis(sims, order2, axis=1)
                    weights = (0.0, 0.3, 0.5, 0.7) if not family else (0.0, 0.5)
                    for w in weights:
                        label = family + (f"margin {w:g}" if w else "nearest")
                        scored.setdefault(label, {})[kind] = (top[:, 0] - w * top[:, 1], order2[:, 0])
            for label, by_kind in scored.items():
                s_str, _ = by_kind["strangers"]
                s_mat, first = by_kind["mated"]
                hit = first == truth
                fnir.setdefault(label, []).append(tuple(
                    float(np.mean(~(hit & (s_mat > np.quantile(s_str, 1.0 - f)))))
                    for f in (0.01, 0.001)
                ))  # fmt: skip
        rows.append({"persons": size, "strangers": len(strangers) - extra,
                     "fnir_at_fpir_0.01_0.001": {k: [round(float(x), 3) for x in np.mean(v, 0)]
                                                 for k, v in fnir.items()}})  # fmt: skip
    return rows


def write_plot(results: dict[str, list[dict[str, Any]]], out: Path, target: float) -> None:
    """FPIR and FNIR against the number of persons for each rule, both halves pooled."""
    from visage.eval.plots import size_curve_png

    halves = list(results.values())
    sizes = [r["persons"] for r in halves[0]]
    labels = {"margin": "margin rule (shipped)", "rule": "nearest distance", "fixed": "fixed 0.3764"}
    series = {
        f"{kind} {name}": [float(np.mean([h[i][rule][kind.lower()] for h in halves]))
                           for i in range(len(sizes))]
        for kind in ("FPIR", "FNIR") for rule, name in labels.items()
    }  # fmt: skip
    title = f"Target FPIR {target:g}: measured rates against gallery size"
    out.write_bytes(size_curve_png(sizes, series, title=title))
    print(f"wrote {out}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=("calibrate", "measure", "compare"))
    parser.add_argument("--faces", type=Path, default=Path(default_faces()))
    parser.add_argument("--cache", type=Path, help="default: /tmp/visage-open-set-embeddings[-tta].npz")
    parser.add_argument("--tta", action="store_true", help="mirrored-chip averaging (not calibrate)")
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, help="measure: write FPIR and FNIR against N (PNG)")
    args = parser.parse_args()
    model = MODEL + ("+flip" if args.tta else "")
    paths, vectors = embed_all(args.faces, cache_file(args.cache, args.tta), args.tta)
    labels = [identity(p) for p in paths]
    # 73 of the 150 distractors are also calibration strangers (the same photo): calibrate only on
    # identities absent from people/ and distractors/, so tests measuring those stay disjoint.
    tested = {labels[i] for i, p in enumerate(paths) if not p.startswith("calibration/")}
    people = {labels[i] for i, p in enumerate(paths) if p.startswith("people/")}
    calib = [i for i, p in enumerate(paths) if p.startswith("calibration/") and labels[i] not in tested]
    if args.command == "calibrate":
        record = calibrate(vectors[calib], [labels[i] for i in calib], model_id=model,
                           source=f"calibration/ of shared/faces (LFW) less the identities of people/ "
                           f"and distractors/: {len(calib)} photos of "
                           f"{len({labels[i] for i in calib})} identities, HOG detector"
                           + (", the chip averaged with its mirror" if args.tta else ""))  # fmt: skip
        others = [r for r in json.loads(DATA.read_text("utf-8")) if r["model_id"] != model]
        records = sorted([*others, record], key=lambda r: r["model_id"])
        DATA.write_text("[\n" + ",\n".join(
            " {\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in r.items()) + "\n }"
            for r in records) + "\n]\n", encoding="utf-8")  # fmt: skip
        print(f"wrote {model} to {DATA}: {record['n_impostor']} impostor pairs, "
              f"{record['n_probes']} probes")  # fmt: skip
        return
    idents = sorted({labels[i] for i in calib})
    fold_of = {name: j % 2 for j, name in enumerate(idents)}
    results = {}
    for fold in (0, 1):
        own = [i for i in calib if fold_of[labels[i]] == fold]
        cal = OpenSetCalibration.from_dict(calibrate(vectors[own], [labels[i] for i in own], "fold", model))
        held = [i for i, p in enumerate(paths)
                if not p.startswith("calibration/") or fold_of.get(labels[i]) == 1 - fold]  # fmt: skip
        groups: dict[str, dict[str, int]] = {}
        for i in held:  # a distractor that is also a calibration stranger: one photo, once
            groups.setdefault(labels[i], {}).setdefault(Path(paths[i]).name, i)
        first = sorted(groups, key=lambda n: (n not in people, n))
        mated = {n: vectors[list(groups[n].values())] for n in first if len(groups[n]) >= 2}
        strangers = vectors[[next(iter(ix.values())) for ix in groups.values() if len(ix) == 1]]
        if args.command == "compare":
            results[f"half {fold} (cohort: the other half)"] = compare_fold(
                mated, strangers, vectors[own], [60, 200, 460, 1000]
            )
            continue
        results[f"calibrated on half {fold}"] = measure_fold(
            cal, mated, strangers, [60, 200, 260, 460, 700, 1000], args.target
        )
    if args.plot is not None and args.command == "measure":
        write_plot(results, args.plot, args.target)
    if args.json or args.command == "compare":
        print(json.dumps(results, indent=1))
        return
    for name, rows in results.items():
        print(name)
        for r in rows:
            rule, fixed = r["rule"], r["fixed"]
            mar = r["margin"]
            print(f"  N={r['persons']:5d} mated={r['mated']:4d} strangers={r['strangers']:4d} "
                  f"rank1={r['rank1']:.3f} | margin {mar['threshold']:.4f} FPIR "
                  f"{mar['fpir']:.4f} FNIR {mar['fnir']:.3f} (expected {mar['expected_fnir']}) | "
                  f"distance {rule['threshold']:.4f} ({rule['basis']}) FPIR {rule['fpir']:.4f} "
                  f"FNIR {rule['fnir']:.3f} | fixed {fixed['threshold']:.4f} FPIR "
                  f"{fixed['fpir']:.4f} FNIR {fixed['fnir']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
