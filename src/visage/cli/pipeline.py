"""``visage detect | embed | compare | version``: thin shells over the pipeline API."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import __version__
from ..errors import InputError, InvalidImage, VisageError
from ..names import printable, utf8_text
from .app import app
from .options import (
    DetectorOpt,
    FollowOpt,
    JsonOpt,
    RayOpt,
    UpsampleOpt,
    console,
    emit_json,
    ray_address,
)
from .options import table as new_table
from .progress import progress_bar

if TYPE_CHECKING:  # the pipeline is imported where used, so `visage --help` stays fast
    from collections.abc import Iterator

    from ..groupfile import Box, GroupedFaces
    from ..pipeline import Face, ImageResult


def face_record(face: Face) -> dict[str, Any]:
    """A JSON-ready view of a Face (embedding included when present)."""
    q = face.quality
    record: dict[str, Any] = {
        "box": {"left": face.box[0], "top": face.box[1], "right": face.box[2], "bottom": face.box[3]},
        "score": round(face.score, 4),
        "landmarks": face.landmarks.round(1).tolist(),
        "quality": {
            "score": round(q.score, 3),
            "acceptable": q.acceptable,
            "reasons": list(q.reasons),
            "size": q.size,
            "sharpness": round(q.sharpness, 1),
            "brightness": round(q.brightness, 1),
            "yaw": round(q.yaw, 1),
            "roll": round(q.roll, 1),
        },
    }
    if face.embedding is not None:
        record["embedding"] = [round(float(v), 7) for v in face.embedding]
        record["model_id"] = face.model_id
    return record


@app.command()
def detect(
    paths: Annotated[list[Path], typer.Argument(help="Image files.")],
    detector: DetectorOpt = "hog",
    upsample: UpsampleOpt = 1,
    json_out: JsonOpt = False,
) -> None:
    """Find faces: boxes, landmarks and a quality score with reasons."""
    from ..api import pipeline as get_pipeline

    pipe = get_pipeline(detector, upsample)
    results: list[dict[str, Any]] = []
    failed = 0
    for path in paths:
        try:
            faces = pipe.detect(pipe.load(path))
            results.append({"source": utf8_text(path), "faces": [face_record(f) for f in faces]})
        except VisageError as exc:
            failed += 1
            results.append({"source": utf8_text(path), "error": str(exc)})
            typer.echo(f"error: {exc}", err=True)
    if json_out:
        emit_json(results)
    else:
        table = new_table("#", "box (l,t,r,b)", "score", "quality", "reasons", "source")
        for r in results:
            for i, f in enumerate(r.get("faces", [])):
                b = f["box"]
                table.add_row(str(i), f"{b['left']},{b['top']},{b['right']},{b['bottom']}",
                              f"{f['score']:.2f}", f"{f['quality']['score']:.2f}",
                              "; ".join(f["quality"]["reasons"]) or "-", r["source"])
            if not r.get("faces") and "error" not in r:
                table.add_row("-", "no face", "", "", "", r["source"])
        console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def embed(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or directories (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write (resumable).")] = Path("faces.parquet"),
    detector: DetectorOpt = "hog",
    upsample: UpsampleOpt = 1,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    tta: Annotated[bool, typer.Option(help="Average with the mirrored chip.")] = False,
    follow_symlinks: FollowOpt = False,
    ray: RayOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Embed every face of many photos into a Parquet table; re-running resumes where it stopped."""
    from ..api import pipeline as get_pipeline
    from ..facetable import FaceTable

    if ray is not None and workers > 1:
        raise InputError("--workers sizes the local pool; with --ray the cluster's CPUs decide")
    images = _photos(inputs, follow_symlinks)
    pipe = get_pipeline(detector, upsample, tta)
    table = FaceTable(out)
    todo = [p for p in images if utf8_text(p) not in table.done]
    failures: list[str] = []
    with progress_bar("embedding", total=len(todo), enabled=not json_out) as advance:
        def step(result: Any) -> None:
            if result.error:
                failures.append(result.error)
                typer.echo(f"skipped: {result.error}", err=True)
            advance()

        faces = table.write(_embedded(pipe, todo, workers, ray, step))
    summary = {
        "out": str(out),
        "images": len(images),
        "already_done": len(images) - len(todo),
        "processed": len(todo),
        "failed": len(failures),
        "errors": failures,
        "faces": faces,
    }
    if json_out:
        emit_json(summary)
    else:
        console.print(
            f"{summary['processed']} processed, {summary['already_done']} already done, "
            f"{summary['failed']} failed; {summary['faces']} faces in {printable(out)}",
            markup=False, highlight=False,
        )
    if failures:
        raise typer.Exit(1)


def _embedded(
    pipe: Any, photos: list[Path], workers: int, ray: str | None, step: Any
) -> Iterator[ImageResult]:
    """``pipe``'s results for ``photos``: from the local pool, or from the Ray cluster ``--ray``
    names (:mod:`visage.bulk_ray`, imported only then); ``step`` is called per result."""
    if ray is None:
        return pipe.embed_many(photos, workers=workers, progress=step)  # type: ignore[no-any-return]
    from .. import bulk_ray

    return bulk_ray.embed_many(pipe.config, photos, address=ray_address(ray), progress=step)


def _photos(inputs: list[Path], follow_symlinks: bool) -> list[Path]:
    """The photos in ``inputs`` (:func:`visage.walk.photo_files`), what was left out reported on
    stderr as ``skipped: path: why`` (with --json too: stdout stays one document)."""
    from ..walk import photo_files

    images, skipped = photo_files(inputs, follow_symlinks=follow_symlinks)
    for item in skipped:
        typer.echo(f"skipped: {item['path']}: {item['reason']}", err=True)
    if not images:
        raise InvalidImage("no image files found in the given paths")
    return images


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="First photo.")],
    b: Annotated[Path, typer.Argument(help="Second photo.")],
    face: Annotated[str | None, typer.Option(
        "--face", help="Face of the first photo when it has several: largest, center or an "
        "index (0 = largest). Without it such a photo is refused.")] = None,
    other_face: Annotated[str | None, typer.Option(
        "--other-face", help="The same for the second photo.")] = None,
    face_recognition: Annotated[bool, typer.Option(
        "--face-recognition", help="Also show face_recognition's distance (raw Euclidean, "
        "tolerance 0.6) for the same faces; docs/pipeline.md maps one scale to the other.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Is it the same person? Distance, decision, the calibrated threshold, and each face used."""
    from ..api import compare as compare_faces
    from ..api import face_in
    from ..pipeline import parse_face_pick

    fa, fb = face_in(a, parse_face_pick(face)), face_in(b, parse_face_pick(other_face))
    result = compare_faces(fa, fb)
    info: dict[str, Any] = {
        "a": str(a), "b": str(b), "box": list(fa.box), "other_box": list(fb.box),
        "distance": result.distance, "same": result.same, "threshold": result.threshold,
        "threshold_source": result.threshold_source,
    }
    if face_recognition:
        fr = _face_recognition_distance(a, fa, b, fb)
        info["face_recognition"] = {"distance": fr, "tolerance": 0.6, "same": fr <= 0.6}
    if json_out:
        emit_json(info)
        return
    verdict = "same person" if result.same else "different people"
    console.print(f"{verdict}: distance {result.distance:.4f} "
                  f"(threshold {result.threshold_source}); faces at {fa.box} and {fb.box}",
                  markup=False, highlight=False)
    if face_recognition:
        fr_info = info["face_recognition"]
        console.print(f"face_recognition: distance {fr_info['distance']:.4f} at tolerance 0.6 "
                      f"({'same' if fr_info['same'] else 'different'})", markup=False)


def _face_recognition_distance(a: Path, fa: Face, b: Path, fb: Face) -> float:
    """face_recognition's distance (raw descriptors, Euclidean) between the faces at these boxes."""
    from ..compat import face_recognition as fr

    def encoding(path: Path, found: Face) -> Any:
        left, top, right, bottom = found.box
        return fr.face_encodings(fr.load_image_file(path), [(top, right, bottom, left)])[0]

    return float(fr.face_distance([encoding(a, fa)], encoding(b, fb))[0])


@app.command("group")
def group_photos(
    inputs: Annotated[list[Path], typer.Argument(help="Photos or folders (searched recursively).")],
    onto: Annotated[Path | None, typer.Option(
        "--onto", help="A state file (from --state): the new photos join its grouping, whose "
        "groups keep every face; the file is rewritten with them unless --state names another. "
        "Photos already in it are not added twice.")] = None,
    state: Annotated[Path | None, typer.Option(
        "--state", help="Also save the grouping with each face's embedding, for --onto and "
        "enroll --from-group. Embeddings are biometric data: the file is your own, written "
        "owner-only (0600); delete it when done.")] = None,
    sheet: Annotated[Path | None, typer.Option(
        "--sheet", help="Also write a self-contained HTML contact sheet (a thumbnail per face, "
        "a section per group), owner-only.")] = None,
    detector: DetectorOpt = "hog",
    upsample: UpsampleOpt = 1,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    follow_symlinks: FollowOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Group every face of many photos by person, with no gallery; the edge threshold follows
    the number of faces so large sets do not merge people. Nothing is stored unless --state,
    --onto or --sheet names a file."""
    from .. import contact_sheet, groupfile
    from ..api import pipeline as get_pipeline

    prior = _prior_grouping(onto) if onto else None
    images = _photos(inputs, follow_symlinks)
    if prior is not None:
        images = [p for p in images if os.path.abspath(p) not in set(prior.photos)]
    pipe = get_pipeline(detector, upsample)
    if onto is not None and prior is not None and prior.model_id != pipe.model_id:
        raise InputError(f"{printable(onto)}: grouped with {prior.model_id}, not {pipe.model_id}")
    faces: list[Face] = []
    named: list[tuple[str, Box]] = []
    failed: list[str] = []
    with progress_bar("embedding", total=len(images), enabled=not json_out) as advance:
        for result in pipe.embed_many(images, workers=workers, progress=lambda _: advance()):
            if result.error:
                failed.append(result.error)
                typer.echo(f"skipped: {result.error}", err=True)
            faces += result.faces
            named += [(os.path.abspath(result.source), f.box) for f in result.faces]
    grouped = _grouped(prior, faces, named, failed, pipe.model_id)
    if state or onto:
        groupfile.save(state or onto, grouped)  # type: ignore[arg-type]
    if sheet:
        contact_sheet.write(sheet, grouped)
    doc = grouped.document()
    if json_out:
        emit_json(doc)
    else:
        for number, members in enumerate(doc["groups"], 1):
            console.print(f"group {number} ({len(members)} faces):", markup=False)
            for m in members:
                console.print(f"  {printable(m['photo'])}  {tuple(m['box'])}", markup=False,
                              highlight=False)
        console.print(f"{len(doc['groups'])} groups, {len(doc['messy'])} faces like no other, "
                      f"{doc['faces']} faces ({doc['rule']}; expected "
                      f"{contact_sheet.expected_line(grouped.expected)})", markup=False)
    if failed:
        raise typer.Exit(1)


def _grouped(
    prior: GroupedFaces | None,
    faces: list[Face],
    named: list[tuple[str, Box]],
    failed: list[str],
    model_id: str,
) -> GroupedFaces:
    """``faces`` grouped at the edge threshold for the total, or joined onto ``prior``'s groups
    (:func:`visage.grouping.extend`) when there is one."""
    import numpy as np

    from ..api import embeddings
    from ..groupfile import GroupedFaces
    from ..grouping import edge_threshold, extend, group

    new = embeddings(faces, model_id)
    if prior is None or prior.vectors is None:
        point = edge_threshold(len(faces), model_id)
        return GroupedFaces.of(named, new, group(new, point.threshold), model_id, point, failed)
    point = edge_threshold(len(prior.photos) + len(faces), model_id)
    found = extend(prior.vectors, prior.grouping, new, point.threshold)
    everyone = list(zip(prior.photos, prior.boxes)) + named
    return GroupedFaces.of(everyone, np.concatenate([prior.vectors, new]), found, model_id, point,
                           prior.failed + failed)  # fmt: skip


def _prior_grouping(path: Path) -> GroupedFaces:
    """The state file ``--onto`` names; one holding no embeddings (``--json`` output) is refused."""
    from ..groupfile import read

    prior = read(path)
    if prior.vectors is None and prior.photos:
        raise InputError(f"{printable(path)}: holds no embeddings; write it with visage group "
                         "--state, not --json")
    return prior


@app.command()
def version(json_out: JsonOpt = False) -> None:
    """Versions of Visage, its runtime and its model files."""
    import dlib

    from ..models import resolve_runtime
    from ..models.int8 import int8_status
    from ..models.weights import MODEL_FILES

    runtime = resolve_runtime("auto")
    info = {
        "visage": __version__,
        "python": platform.python_version(),
        "dlib": dlib.__version__,
        "runtime": runtime,
        "onnxruntime": _onnxruntime_version(),
        "int8": int8_status(),
        "models": {m.name: {"file": m.filename, "sha256": m.sha256, "task": m.task}
                   for m in MODEL_FILES.values()},
    }
    if json_out:
        emit_json(info)
    else:
        console.print(f"visage {__version__} (python {info['python']}, dlib {info['dlib']}, "
                      f"onnxruntime {info['onnxruntime']}; default runtime: {runtime})")
        int8 = info["int8"]
        console.print(f"  int8: {int8['status']} ({int8['cpu']}: "
                      f"{', '.join(int8['cpu_flags']) or 'no INT8 CPU features'})", markup=False)
        for name, m in info["models"].items():
            console.print(f"  {name}: {m['file']} sha256:{m['sha256'][:12]}…", markup=False)


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)
