"""Runtime speed: the embedder on dlib vs ONNX fp32 vs ONNX INT8, detection on dlib vs ONNX.

    .venv/bin/python benchmarks/runtime.py [--pool 64] [--mmod-photos 12] [--faces DIR]
                                           [--avx2] [--write docs/performance-runtime.md]

Embedder: ms per face over a pool of aligned chips (the central face of the first ``people/``
photos), at batch sizes 1, 8 and 32; the best of ``--repeats`` passes (dlib: 2, it is slow);
the speed-up compares each runtime's best batch size with dlib's. INT8 is calibrated on chips of the ``distractors/`` photos,
none of whom are in the pool or in the pairs. Detection: ms per photo at ``upsample=1`` on the
first ``--mmod-photos`` photos. Accuracy: 3-fold accuracy on ``pairs_dev.txt`` for each
embedder, on the central face of every ``people/`` photo. FLOPs are counted from the converted
graph (convolutions and the final matmul, 2 per multiply-add); the CPU's peak is
cores x clock x 32 fp32 FLOP/cycle (AMD Zen 4: two 256-bit FMA pipes run AVX-512) and 4x that
for INT8 (VNNI ``vpdpbusd``: 4 multiply-adds per 32-bit lane). ``--avx2`` also runs the INT8
model over every chip under ``qemu-x86_64 -cpu Haswell-v4`` (AVX2, no AVX-512, no VNNI) and
reports its accuracy and drift there (emulated: no timing).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
from machine import default_faces

from visage import align
from visage.eval.metrics import kfold_accuracy
from visage.eval.protocols import read_lfw_pairs
from visage.imageio import load_image
from visage.models import make_detector, make_landmarker
from visage.models.base import Detection, Detector, Embedder
from visage.models.dlib_runtime import DlibEmbedder
from visage.models.int8 import cpu_int8
from visage.models.onnx_convert import converted_model_path
from visage.models.onnx_runtime import OnnxEmbedder, OnnxMmodDetector

Chips = npt.NDArray[np.uint8]
BATCHES = (1, 8, 32)
FP32_FLOP_PER_CYCLE = 32
INT8_OPS_PER_CYCLE = 4 * FP32_FLOP_PER_CYCLE
HAND_WRITTEN = "<!-- written by hand below: kept when --write regenerates the tables above -->"


def _centre_offset(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> float:
    h, w = shape[:2]
    return float(np.hypot((box[0] + box[2]) / 2 - w / 2, (box[1] + box[3]) / 2 - h / 2))


def central_chips(paths: Sequence[Path]) -> tuple[Chips, list[Path]]:
    """The face nearest each photo's centre (within 40 px), aligned; photos without one left out."""
    detector, landmarker = make_detector("hog"), make_landmarker(5)
    chips, kept = [], []
    for path in paths:
        img = load_image(path)
        offsets = [(_centre_offset(d.box, img.shape), d) for d in detector.detect(img, upsample=1)]
        near = [(off, d) for off, d in offsets if off <= 40]
        if not near:
            continue
        best = min(near, key=lambda pair: pair[0])[1]
        marks = landmarker.landmarks(img, [best.landmark_rect])
        chips.append(align.align_many(img, marks)[0])
        kept.append(path)
    return np.stack(chips), kept


def ms_per_face(embedder: Embedder, pool: Chips, batch: int, repeats: int) -> float:
    embedder.embed_chips(pool[:batch])  # warm-up: session, allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(pool) - batch + 1, batch):
            embedder.embed_chips(pool[i : i + batch])
        done = (len(pool) // batch) * batch
        best = min(best, (time.perf_counter() - start) * 1000 / done)
    return best


def ms_per_photo(
    detector: Detector, images: Sequence[npt.NDArray[np.uint8]]
) -> tuple[float, list[list[Detection]]]:
    detector.detect(images[0], upsample=1)  # warm-up
    start = time.perf_counter()
    found = [detector.detect(img, upsample=1) for img in images]
    return (time.perf_counter() - start) * 1000 / len(images), found


def box_agreement(a: list[list[Detection]], b: list[list[Detection]]) -> tuple[int, int]:
    """Photos whose face counts differ, and the largest coordinate difference elsewhere (px)."""
    count_diffs, worst = 0, 0
    for da, db in zip(a, b):
        if len(da) != len(db):
            count_diffs += 1
            continue
        for x, y in zip(da, db):
            worst = max(worst, *(abs(p - q) for p, q in zip(x.landmark_rect, y.landmark_rect)))
    return count_diffs, worst


def embedder_flops() -> int:
    """FLOPs of one face through the converted ResNet: 2 per multiply-add of convs and matmul."""
    model = onnx.load(converted_model_path("resnet"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out, w = shapes[node.output[0]], weights[node.input[1]]
            flops += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "MatMul":
            w = weights[node.input[1]]
            flops += 2 * w[0] * w[1]
    return flops


def cpu_peak() -> tuple[float, int, str]:
    """(GHz, cores, model) from /proc/cpuinfo (the nominal clock; boost may be higher)."""
    mhz, model = 0.0, platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":")[1])
            elif line.startswith("model name"):
                model = line.split(":")[1].strip()
    except OSError:
        pass
    return mhz / 1000, os.cpu_count() or 1, model


def emulated_avx2(model: Path, chips: Chips) -> npt.NDArray[np.float32]:
    """Raw descriptors of ``chips`` by ``model`` as an AVX2-only CPU computes them (qemu)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "chips.npy", chips)
        runner = Path(__file__).with_name("onnx_run.py")
        cmd = ["qemu-x86_64", "-cpu", "Haswell-v4", sys.executable, str(runner)]
        subprocess.run(
            [*cmd, f"{tmp}/chips.npy", str(model), f"{tmp}/out.npy"],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        out: npt.NDArray[np.float32] = np.load(Path(tmp) / "out.npy")
    return out


def _unit(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def pair_accuracy(
    pairs_file: Path,
    people: Path,
    chips: Chips,
    photos: list[Path],
    embed: Callable[[Chips], npt.NDArray[np.float32]],
) -> tuple[float, float]:
    """Mean and std of 3-fold accuracy; a pair with a photo without a face never matches."""
    unit = _unit(embed(chips))
    index = {p.resolve(): i for i, p in enumerate(photos)}
    pairs = read_lfw_pairs(pairs_file, people)
    dist = []
    for pair in pairs:
        a, b = index.get(pair.a.resolve()), index.get(pair.b.resolve())
        dist.append(np.nan if a is None or b is None else float(np.linalg.norm(unit[a] - unit[b])))
    result = kfold_accuracy(dist, [p.same for p in pairs], [p.fold for p in pairs])
    return result.mean * 100, result.std * 100


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pool", type=int, default=64, help="chips timed per embedder")
    parser.add_argument("--mmod-photos", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--faces", default=default_faces())
    parser.add_argument("--avx2", action="store_true", help="also run INT8 on an emulated AVX2")
    parser.add_argument("--write", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    faces = Path(args.faces)
    people = sorted((faces / "people").glob("*/*.jpg"))
    if not people:
        raise SystemExit(f"no photos under {faces}/people: set VISAGE_FACES")
    load_before = os.getloadavg()

    print(f"aligning the central face of {len(people)} people/ photos and the distractors ...")
    chips, chip_photos = central_chips(people)
    calibration, _ = central_chips(sorted((faces / "distractors").glob("*.jpg")))
    pool = chips[: args.pool]

    dlib_emb = DlibEmbedder()
    fp32 = OnnxEmbedder()
    int8 = OnnxEmbedder(quantized=True, calibration_chips=calibration)
    int8.embed_chips(pool[:1])  # quantize (cached) and check on this CPU before timing
    check = int8.int8_check
    assert check is not None

    print("timing the embedders ...")
    timings: dict[str, dict[int, float]] = {}
    for name, emb, repeats in (
        ("dlib", dlib_emb, min(2, args.repeats)),
        ("onnx fp32", fp32, args.repeats),
        ("onnx int8", int8, args.repeats),
    ):
        timings[name] = {b: ms_per_face(emb, pool, b, repeats) for b in BATCHES}
        print(
            f"  {name:10s} " + "  ".join(f"b{b}: {timings[name][b]:7.2f} ms/face" for b in BATCHES)
        )

    print("accuracy on pairs_dev.txt ...")
    reference = dlib_emb.embed_chips(chips)
    fp32_all = fp32.embed_chips(chips)
    max_diff = float(np.abs(fp32_all - reference).max())
    int8_all = int8.embed_chips(chips)
    int8_shift = np.linalg.norm(_unit(int8_all) - _unit(fp32_all), axis=1)
    pairs_file, people_dir = faces / "pairs_dev.txt", faces / "people"
    accuracy = {
        "dlib": pair_accuracy(pairs_file, people_dir, chips, chip_photos, lambda _: reference),
        "onnx fp32": pair_accuracy(pairs_file, people_dir, chips, chip_photos, lambda _: fp32_all),
        "onnx int8": pair_accuracy(pairs_file, people_dir, chips, chip_photos, lambda _: int8_all),
    }
    avx2_note = ""
    if args.avx2:
        print("INT8 on an emulated AVX2 CPU (qemu Haswell-v4; minutes) ...")
        avx2_all = emulated_avx2(converted_model_path("resnet").with_name(check.model), chips)
        avx2_shift = np.linalg.norm(_unit(avx2_all) - _unit(fp32_all), axis=1)
        avx2_acc = pair_accuracy(pairs_file, people_dir, chips, chip_photos, lambda _: avx2_all)
        avx2_note = (
            f"The same INT8 model on an emulated AVX2-only CPU (qemu-x86_64 -cpu Haswell-v4: no "
            f"AVX-512, no VNNI) over the same {len(chips)} faces: 3-fold accuracy "
            f"{avx2_acc[0]:.2f} ± {avx2_acc[1]:.2f} % (fp32 {accuracy['onnx fp32'][0]:.2f}); "
            f"descriptors move by {avx2_shift.mean():.3f} on average (max {avx2_shift.max():.3f})."
        )

    print("timing detection ...")
    images = [load_image(p) for p in people[: args.mmod_photos]]
    detection = {
        "HOG (dlib)": ms_per_photo(make_detector("hog"), images),
        "MMOD dlib": ms_per_photo(make_detector("cnn", runtime="dlib"), images),
        "MMOD onnx": ms_per_photo(OnnxMmodDetector(), images),
    }

    flops = embedder_flops()
    ghz, cores, model = cpu_peak()
    peak = ghz * 1e9 * cores * FP32_FLOP_PER_CYCLE
    load_after = os.getloadavg()

    emb_rows = []
    for name, by_batch in timings.items():
        fraction = flops / (min(by_batch.values()) / 1000) / (peak * (4 if "int8" in name else 1))
        emb_rows.append(
            [
                name,
                *(f"{by_batch[b]:.1f}" for b in BATCHES),
                f"{min(timings['dlib'].values()) / min(by_batch.values()):.1f}x",
                f"{accuracy[name][0]:.2f} ± {accuracy[name][1]:.2f}",
                f"{100 * fraction:.0f}%",
            ]
        )
    det_rows = [
        [name, f"{ms:.0f}", str(sum(map(len, found))), f"{detection['MMOD dlib'][0] / ms:.1f}x"]
        for name, (ms, found) in detection.items()
    ]
    count_diffs, worst_px = box_agreement(detection["MMOD dlib"][1], detection["MMOD onnx"][1])
    mmod_note = (
        f"MMOD onnx vs dlib on these photos: face counts differ on {count_diffs} of "
        f"{len(images)}; boxes differ by at most {worst_px} px."
    )
    emb_header = [
        "runtime",
        *(f"batch {b}" for b in BATCHES),
        "speed-up vs dlib (best batch)",
        "3-fold accuracy % (pairs_dev)",
        "of CPU peak (best batch)",
    ]
    det_header = ["detector", "ms/photo", f"faces in {len(images)} photos", "vs MMOD dlib"]
    flops_note = (
        f"FLOPs per face: {flops / 1e9:.2f} GFLOP (convolutions + final matmul). Peak assumed: "
        f"{cores} cores x {ghz:.2f} GHz x {FP32_FLOP_PER_CYCLE} FLOP/cycle = {peak / 1e9:.0f} "
        f"GFLOP/s fp32, 4x that in INT8 ops. CPU: {model}; onnxruntime {onnxruntime.__version__}. "
        "The clock is the nominal one the VM reports; a fraction above 100% means the cores "
        "boost above it or the runtime's convolutions need fewer multiplies than the direct count."
    )
    cpu = cpu_int8()
    equivalence_note = (
        f"ONNX fp32 vs dlib over {len(chips)} faces: max abs difference {max_diff:.1e}. INT8 "
        f"moves a normalised descriptor by {int8_shift.mean():.3f} on average (max "
        f"{int8_shift.max():.3f}); it was calibrated on {len(calibration)} distractor chips. "
        f"INT8 check on this CPU ({', '.join(cpu.flags) or 'no INT8 features'}): "
        f"{check.summary()}."
    )
    load_note = (
        f"Load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f} (a shared "
        "machine: figures are as measured, other work included)."
    )
    report = "\n\n".join(
        [
            "## Embedder: ms per face (lower is better)",
            table(emb_header, emb_rows),
            flops_note,
            equivalence_note,
            *([avx2_note] if avx2_note else []),
            "## Detection: ms per photo at upsample=1 (250x250 photos)",
            table(det_header, det_rows),
            mmod_note,
            load_note,
        ]
    )
    command = " ".join(
        [f"VISAGE_FACES={shlex.quote(str(faces))}", ".venv/bin/python", *map(shlex.quote, sys.argv)]
    )
    print("\n" + report)
    if args.write:
        title = "# Runtime performance: dlib vs ONNX"
        kept = ""  # the hand-written part below HAND_WRITTEN survives a re-run
        if args.write.is_file() and HAND_WRITTEN in args.write.read_text():
            kept = "\n" + args.write.read_text().split(HAND_WRITTEN, 1)[1].lstrip("\n")
        body = f"{title}\n\nProduced by\n\n    {command}\n\n{report}\n"
        args.write.write_text(body + (f"\n{HAND_WRITTEN}\n{kept}" if kept else ""))
        print(f"\nwritten to {args.write}")


if __name__ == "__main__":
    main()
