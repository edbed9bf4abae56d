"""``visage enroll | identify | persons | consent | audit | export | import``: shells over the gallery.

Every rule (consent, quality gate, thresholds, audit) lives in :class:`visage.gallery.Gallery`;
these commands parse arguments, call it, and print a table or ``--json``.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import InputError, NotFound, StorageError, VisageError
from ..names import is_utf8, printable, utf8_text
from .app import app
from .options import (
    DetectorOpt,
    FollowOpt,
    JsonOpt,
    RayOpt,
    UpsampleOpt,
    console,
    emit_json,
    err_console,
    ray_address,
    read_from,
)
from .options import table as new_table
from .progress import progress_bar

if TYPE_CHECKING:  # the gallery is imported where used, so `visage --help` stays fast
    from ..gallery import Gallery, PersonInfo
    from ..groupfile import Box
    from ..pipeline import ImageResult

DbOpt = Annotated[
    str | None,
    typer.Option("--db", envvar="VISAGE_DB", show_envvar=True,
                 help="Store: a SQLite file or a database URL (postgresql+psycopg://…). "
                      "Default ~/.local/share/visage/visage.db."),
]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="The collection (gallery).")]
ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who is acting, for the audit log (default cli:$USER).")
]
PurposeOpt = Annotated[str | None, typer.Option("--purpose", help="Why, for the audit log.")]
IndexOpt = Annotated[
    str, typer.Option("--index", help="auto, exact, faiss:<factory>[;<knobs>] or milvus:<uri>.")
]
FaceOpt = Annotated[
    str | None,
    typer.Option("--face", help="With several faces in a photo: largest, center, or an index "
                                "(0 = largest). Default: refuse such photos."),
]

persons_app = typer.Typer(help="List, show and delete enrolled persons.", no_args_is_help=True)
consent_app = typer.Typer(help="Grant and revoke consent records.", no_args_is_help=True)
audit_app = typer.Typer(help="Read and verify the hash-chained audit log.", no_args_is_help=True)
app.add_typer(persons_app, name="persons")
app.add_typer(consent_app, name="consent")
app.add_typer(audit_app, name="audit")


@contextmanager
def _open(db: str | None, actor: str | None, *, index: str = "auto",
          pipeline_args: tuple[str, int] | None = None, read: bool = False) -> Iterator[Gallery]:
    """The gallery at ``db``; ``read``: a read-only command, which creates no store and says on
    stderr which store it read."""
    from ..api import pipeline as get_pipeline
    from ..gallery import Gallery

    pipe = get_pipeline(*pipeline_args) if pipeline_args else None
    who = actor or f"cli:{getpass.getuser()}"
    with Gallery(db, index=index, actor=who, pipeline=pipe, create=not read) as gallery:
        yield gallery
    if read:
        read_from(gallery.url)


def _when(value: str | None) -> datetime | None:
    """An ISO date or datetime from the command line; naive values are taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"not an ISO date or datetime: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _person_record(p: PersonInfo) -> dict[str, Any]:
    return {
        "id": p.id,
        "display_name": p.display_name,
        "external_id": p.external_id,
        "metadata": p.metadata,
        "templates": p.templates,
        "consent_valid": p.consent_valid,
        "created_at": _iso(p.created_at),
        "consents": [
            {"id": c.id, "basis": c.basis, "purpose": c.purpose, "granted_by": c.granted_by,
             "granted_at": _iso(c.granted_at), "expires_at": _iso(c.expires_at),
             "revoked_at": _iso(c.revoked_at), "status": c.status}
            for c in p.consents
        ],
    }


def _consent_status(p: PersonInfo) -> str:
    return p.consents[-1].status if p.consents else "none"


@app.command()
def enroll(
    basis: Annotated[str, typer.Option("--basis", help="Lawful basis: consent, contract, "
                                       "legal-obligation, vital-interests, public-task, "
                                       "legitimate-interests.")],
    granted_by: Annotated[str, typer.Option("--granted-by", help="Who gave or recorded consent.")],
    directory: Annotated[Path | None, typer.Argument(
        help="One sub-folder of photos per person (or --from-group).")] = None,
    from_group: Annotated[Path | None, typer.Option(
        "--from-group", help="Instead of DIRECTORY: a file from visage group --json or --state; "
        "the faces of --group become one person.")] = None,
    group: Annotated[int | None, typer.Option(
        "--group", help="With --from-group: the group's number, as visage group prints it "
        "(1 = the largest).")] = None,
    external_id: Annotated[str | None, typer.Option(
        "--external-id", help="With --from-group: the person's external id (an enrolled person "
        "keeps their consent record).")] = None,
    person_name: Annotated[str | None, typer.Option(
        "--person-name", help="With --from-group: the new person's display name (default: the "
        "external id).")] = None,
    collection: CollectionOpt = "default",
    expires: Annotated[str | None, typer.Option("--expires", help="Consent end (ISO date).")] = None,
    consent_purpose: Annotated[str | None, typer.Option("--consent-purpose")] = None,
    target_fpir: Annotated[float, typer.Option(
        "--target-fpir", help="For a new collection: the share of strangers identify may name "
        "as someone, at whatever size it grows to (default 0.01).")] = 0.01,
    face: FaceOpt = None,
    follow_symlinks: FollowOpt = False,
    db: DbOpt = None,
    actor: ActorOpt = None,
    purpose: PurposeOpt = None,
    detector: DetectorOpt = "hog",
    upsample: UpsampleOpt = 1,
    ray: RayOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Enroll every person folder in DIRECTORY (the folder name is the external id) from the
    photos directly inside it; anything else is reported as skipped, with why. A symbolic link
    leading out of DIRECTORY is skipped unless --follow-symlinks; only regular files are read,
    each of at most 161 MB.

    Or enroll one group of a grouping (--from-group FILE --group N --external-id ID): each of
    its photos is read again and the face whose box overlaps the stored one (IoU at least 0.5)
    is enrolled; a photo where none does is refused with the reason. A bad group number, a
    missing photo or a file visage group did not write stops before anything is enrolled.

    New persons get a consent record with the basis given here; persons already enrolled keep
    theirs (one whose consent was revoked is refused, not re-consented). Photos failing the
    quality gate or holding several faces (without --face) are refused with the reason.
    """
    from ..gallery import ConsentBasis
    from ..pipeline import parse_face_pick

    if (directory is None) == (from_group is None):
        raise InputError("give a DIRECTORY of person folders or --from-group FILE (one of them)")
    skipped: list[dict[str, str]]
    if from_group is not None:
        if face is not None:
            raise InputError("--face does not apply to --from-group: the group names each face "
                             "by its box")
        if ray is not None:
            raise InputError("--ray applies to a DIRECTORY of person folders, not --from-group")
        plan, skipped = _group_plan(from_group, group, external_id, person_name), []
    else:
        assert directory is not None
        plan, skipped = _folder_plan(directory, follow_symlinks)
    pick = parse_face_pick(face)
    until = _when(expires)
    ConsentBasis.parse(basis)  # refuse a bad basis before any person is created
    rows: list[dict[str, Any]] = []
    new = 0
    with _open(db, actor, pipeline_args=(detector, upsample)) as g:
        g.create_collection(collection, target_fpir=target_fpir, exist_ok=True)
        ids: dict[str, str] = {}

        def face_at_box(person: str, photo: Path, box: Box) -> int:
            """Which face of ``photo`` is the one a grouping stored at ``box``
            (:func:`visage.groupfile.face_at`, found by the gallery's own pipeline); a photo
            where none is, is refused and the refusal audited as ``enroll.refused``, as the
            gallery's own refusals are."""
            from ..api import pipeline as get_pipeline
            from ..groupfile import face_at

            pipe = get_pipeline(detector, upsample)
            try:
                return face_at(pipe.detect(pipe.load(photo)), box, str(photo))
            except VisageError as exc:
                g.record_refusal("enroll", collection, exc, purpose=purpose, actor=None,
                                 person=person)
                raise

        for key, name in plan.persons.items():
            try:
                ids[key] = g.person(collection, key).id
            except NotFound:
                person = g.add_person(collection, name, external_id=key)
                g.grant_consent(collection, person.id, basis=basis, granted_by=granted_by,
                                purpose=consent_purpose, expires_at=until)
                ids[key] = person.id
                new += 1
        embedded = _ray_embedded(plan, detector, upsample, ray, json_out) if ray else {}
        with progress_bar("enrolling", total=len(plan.photos), enabled=not json_out) as advance:
            for key, photo, box in plan.photos:
                try:
                    chosen = pick if box is None else face_at_box(ids[key], photo, box)
                    source = embedded.get(utf8_text(photo), photo)
                    result = g.enroll(collection, ids[key], source, face=chosen, purpose=purpose)
                    rows.append({"photo": printable(photo), "person": key,
                                 "template": result.template_id,
                                 "status": "enrolled" if result.created else "duplicate"})
                except VisageError as exc:
                    rows.append({"photo": printable(photo), "person": key,
                                 "status": "refused", "reason": printable(str(exc))})
                advance()
        persons = g.collection(collection).persons
    counts = {s: sum(r["status"] == s for r in rows) for s in ("enrolled", "duplicate", "refused")}
    if json_out:
        emit_json({"collection": collection, **counts, "skipped": skipped, "persons": persons,
                   "new_persons": new, "photos": rows})
        return
    for r in rows:
        if r["status"] == "refused":
            typer.echo(f"refused: {r['reason']}", err=True)
    for item in skipped:
        typer.echo(f"skipped: {item['path']}: {item['reason']}", err=True)
    typer.echo(f"{counts['enrolled']} enrolled, {counts['duplicate']} already enrolled, "
               f"{counts['refused']} refused, {len(skipped)} skipped; {persons} persons in "
               f"{collection!r} ({new} new)")


def _ray_embedded(
    plan: _Plan, detector: str, upsample: int, ray: str, json_out: bool
) -> dict[str, ImageResult]:
    """Every photo of ``plan`` embedded on the Ray cluster ``--ray`` names, by source: the
    workers only embed; the driver enrolls each result through the gallery (consent, quality,
    audit), so no worker ever writes the store."""
    from .. import bulk_ray
    from ..api import pipeline as get_pipeline

    photos = [photo for _, photo, _ in plan.photos]
    config = get_pipeline(detector, upsample).config
    with progress_bar("embedding", total=len(photos), enabled=not json_out) as advance:
        return {r.source: r for r in bulk_ray.embed_many(
            config, photos, address=ray_address(ray), progress=lambda _: advance())}


@dataclass(frozen=True)
class _Plan:
    """What enroll will do: ``persons`` (external id → display name for a new person) and
    ``photos`` as ``(external id, photo, stored box or None)``."""

    persons: dict[str, str]
    photos: list[tuple[str, Path, Box | None]]


def _folder_plan(directory: Path, follow_symlinks: bool) -> tuple[_Plan, list[dict[str, str]]]:
    """One person per sub-folder of ``directory`` (:func:`_person_photos`), and what is skipped."""
    if not directory.is_dir():
        raise InputError(f"{printable(directory)}: not a directory")
    try:
        photos, skipped = _person_photos(directory, follow_symlinks)
    except OSError as exc:
        raise InputError(f"{printable(directory)}: cannot be read: {exc.strerror or exc}") from None
    folders = sorted({folder for folder, _ in photos})
    if not folders:
        raise InputError(f"{printable(directory)}: no person sub-folders with photos")
    persons = {f.name: f.name.replace("_", " ") for f in folders}
    return _Plan(persons, [(folder.name, photo, None) for folder, photo in photos]), skipped


def _group_plan(
    path: Path, number: int | None, external_id: str | None, person_name: str | None
) -> _Plan:
    """Group ``number`` of the grouping at ``path`` as one person; every photo must still be a
    file (else :class:`InputError`, before anything is enrolled)."""
    from ..groupfile import read

    if number is None or external_id is None:
        raise InputError("--from-group needs --group N and --external-id ID")
    members = read(path).group(number)
    for photo, _ in members:
        if not Path(photo).is_file():
            raise InputError(f"{printable(photo)}: no such photo (group {number} of "
                             f"{printable(path)}); nothing enrolled")
    photos: list[tuple[str, Path, Box | None]] = [(external_id, Path(p), b) for p, b in members]
    return _Plan({external_id: person_name or external_id}, photos)


def _person_photos(
    directory: Path, follow_symlinks: bool
) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """``(person folder, photo)`` for the photos directly inside each sub-folder of
    ``directory``, and what is skipped with why: photos beside the person folders, folders
    inside a person folder, sub-folders holding no photo or whose name is not UTF-8 (not made
    persons), and what :class:`visage.walk.PhotoRoot` refuses (links out of ``directory``,
    files that are not regular)."""
    from ..walk import PhotoRoot, skip

    root = PhotoRoot(directory, follow_symlinks=follow_symlinks)
    photos: list[tuple[Path, Path]] = []
    skipped: list[dict[str, str]] = []
    for entry in root.entries(directory):
        if entry.kind == "refused":
            skipped.append(entry.skipped())
        if entry.kind == "photo":
            skipped.append(skip(entry.path, "a photo beside the person folders, not in one: "
                                "move it into its person's folder"))
        if entry.kind != "folder":
            continue
        folder = entry.path
        if not is_utf8(folder.name):
            skipped.append(skip(folder, "the folder's name is not UTF-8 text: not made a person "
                                "(the name is the person's external id); rename it"))
            continue
        try:
            inside = root.entries(folder)
        except OSError as exc:
            skipped.append(skip(folder, f"cannot be read: {exc.strerror or exc}"))
            continue
        mine = [e.path for e in inside if e.kind == "photo"]
        photos.extend((folder, p) for p in mine)
        if not mine:
            skipped.append(skip(folder, "no photo directly inside: not made a person (one "
                                "folder per person, its photos directly inside)"))
        skipped.extend(e.skipped() for e in inside if e.kind == "refused")
        skipped.extend(
            skip(e.path, f"a folder inside person folder {folder.name!r}: its photos are not "
                 "enrolled (one folder per person, its photos directly inside)")
            for e in inside if e.kind == "folder"
        )
    return photos, skipped


@app.command()
def identify(
    photos: Annotated[list[Path], typer.Argument(help="Photos to identify.")],
    collection: CollectionOpt = "default",
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Candidates per face.")] = 3,
    face: Annotated[str, typer.Option(
        "--face", help="Which faces: all (one answer per face, with its box), largest, center, "
        "or an index (0 = largest).")] = "all",
    db: DbOpt = None,
    actor: ActorOpt = None,
    purpose: PurposeOpt = None,
    detector: DetectorOpt = "hog",
    upsample: UpsampleOpt = 1,
    json_out: JsonOpt = False,
) -> None:
    """Who is in each photo? For every face (or the one --face picks), the nearest persons and
    'unknown' beyond the threshold of the collection's target FPIR."""
    from ..pipeline import parse_face_pick

    pick = None if face == "all" else parse_face_pick(face)

    def answer(photo: Path, found: Any, box: Any) -> dict[str, Any]:
        return {
            "photo": printable(photo),
            "box": None if box is None else list(box),
            "unknown": found.unknown,
            "threshold": found.threshold,
            "operating_point": asdict(found.operating_point),
            "candidates": [
                {"person": c.person_id, "display_name": c.display_name,
                 "external_id": c.external_id, "distance": round(c.distance, 4), "same": c.same}
                for c in found.candidates
            ],
        }

    results: list[dict[str, Any]] = []
    with (
        _open(db, actor, pipeline_args=(detector, upsample)) as g,
        progress_bar("identifying", total=len(photos), enabled=not json_out) as advance,
    ):
        for photo in photos:
            try:
                if pick is None:
                    results += [answer(photo, found, f.box) for f, found in
                                g.identify_faces(collection, photo, k=k, purpose=purpose)]
                else:
                    found = g.identify(collection, photo, k=k, face=pick, purpose=purpose)
                    results.append(answer(photo, found, None))
            except InputError as exc:
                results.append({"photo": printable(photo), "error": str(exc)})
                if not json_out:
                    typer.echo(f"error: {exc}", err=True)
            advance()
    failed = sum("error" in r for r in results)
    if json_out:
        emit_json(results)
    else:
        table = new_table("photo", "face box", "answer", "distance", "next candidates")
        for r in results:
            if "error" in r:
                table.add_row(r["photo"], "", f"error: {r['error']}", "", "")
                continue
            cands = r["candidates"]
            name = "unknown" if r["unknown"] else cands[0]["display_name"]
            best = f"{cands[0]['distance']:.3f}" if cands else "-"
            rest = ", ".join(f"{c['display_name']} {c['distance']:.3f}" for c in cands[1:])
            box = ",".join(map(str, r["box"])) if r["box"] else ""
            table.add_row(r["photo"], box, name, best, rest)
        console.print(table)
    if failed:
        raise typer.Exit(1)


@persons_app.command("list")
def persons_list(
    collection: CollectionOpt = "default",
    limit: Annotated[int, typer.Option("--limit", min=1)] = 1000,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Persons of a collection with their template count and consent status."""
    with _open(db, None, read=True) as g:
        people = g.persons(collection, offset=offset, limit=limit)
    if json_out:
        emit_json([_person_record(p) for p in people])
        return
    table = new_table("id", "name", "external id", "templates", "consent", whole={"id"})
    for p in people:
        table.add_row(p.id, p.display_name, p.external_id or "", str(p.templates),
                      _consent_status(p))
    console.print(table)


@persons_app.command("show")
def persons_show(
    person: Annotated[str, typer.Argument(help="Person id or external id.")],
    collection: CollectionOpt = "default",
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One person: metadata, templates, and every consent record."""
    with _open(db, None, read=True) as g:
        info = g.person(collection, person)
    record = _person_record(info)
    if json_out:
        emit_json(record)
        return
    for key in ("id", "display_name", "external_id", "templates", "consent_valid", "created_at"):
        typer.echo(f"{key}: {printable(str(record[key]))}")
    table = new_table("consent", "basis", "granted by", "granted", "expires", "revoked", "status")
    for c in record["consents"]:
        table.add_row(str(c["id"]), c["basis"], c["granted_by"], c["granted_at"],
                      c["expires_at"] or "", c["revoked_at"] or "", c["status"])
    console.print(table)


@persons_app.command("delete")
def persons_delete(
    person: Annotated[str, typer.Argument(help="Person id or external id.")],
    collection: CollectionOpt = "default",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    db: DbOpt = None,
    actor: ActorOpt = None,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete a person, their consent records and every template (store and index)."""
    if not yes and not sys.stdin.isatty():
        raise InputError("persons delete: no terminal to confirm on; pass --yes to delete")
    with _open(db, actor) as g:
        info = g.person(collection, person)
        if not yes:
            typer.confirm(f"delete {printable(info.display_name)} ({info.id}) and {info.templates} "
                          "templates?", abort=True)
        removed = g.delete_person(collection, info.id, purpose=purpose)
    if json_out:
        emit_json({"person": info.id, "templates_removed": removed})
    else:
        typer.echo(f"deleted {printable(info.display_name)} ({info.id}): {removed} templates "
                   "removed")


@consent_app.command("grant")
def consent_grant(
    person: Annotated[str, typer.Argument(help="Person id or external id.")],
    basis: Annotated[str, typer.Option("--basis", help="Lawful basis (see `visage enroll`).")],
    granted_by: Annotated[str, typer.Option("--granted-by")],
    collection: CollectionOpt = "default",
    expires: Annotated[str | None, typer.Option("--expires", help="ISO date.")] = None,
    consent_purpose: Annotated[str | None, typer.Option("--consent-purpose")] = None,
    db: DbOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Record consent (or another lawful basis) for a person."""
    with _open(db, actor) as g:
        c = g.grant_consent(collection, person, basis=basis, granted_by=granted_by,
                            purpose=consent_purpose, expires_at=_when(expires))
    if json_out:
        emit_json({"consent": c.id, "status": c.status, "expires_at": _iso(c.expires_at)})
    else:
        typer.echo(f"consent {c.id} recorded ({c.basis}, {c.status})")


@consent_app.command("revoke")
def consent_revoke(
    person: Annotated[str, typer.Argument(help="Person id or external id.")],
    collection: CollectionOpt = "default",
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    db: DbOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a person's consent and delete every template of theirs (store and index)."""
    with _open(db, actor) as g:
        removed = g.revoke_consent(collection, person, reason=reason)
    if json_out:
        emit_json({"person": person, "templates_removed": removed})
    else:
        typer.echo(f"consent revoked; {removed} templates removed")


@audit_app.command("show")
def audit_show(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N events.")] = 20,
    collection: Annotated[str | None, typer.Option(
        "--collection", "-c", help="Only this collection's events.")] = None,
    action: Annotated[str | None, typer.Option(
        help="Only this action's events (e.g. enroll, identify, person.delete, enroll.refused).")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor's events (a key id).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only events at or after this ISO date or datetime (naive: UTC).")] = None,
    until: Annotated[str | None, typer.Option(
        help="Only events before this ISO date or datetime (naive: UTC).")] = None,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The newest audit events (of one collection, action, actor or time window), oldest first,
    as the API's ``GET /v1/audit?collection=…&action=…&actor=…&since=…&until=…`` filters them."""
    with _open(db, None, read=True) as g:
        events = g.audit_events(
            collection=collection, action=action, actor=actor, since=_when(since),
            until=_when(until), limit=limit, newest_first=True,
        )[::-1]  # fmt: skip
    if json_out:
        emit_json([e.__dict__ for e in events])
        return
    table = new_table("seq", "time", "actor", "action", "collection", "purpose", "summary",
                      whole={"seq"})
    for e in events:
        summary = "\n".join(f"{k}={v}" for k, v in sorted(e.summary.items()) if k != "candidates")
        table.add_row(str(e.seq), e.at[:19], e.actor, e.action, e.collection or "",
                      e.purpose or "", summary)
    console.print(table)


@audit_app.command("verify")
def audit_verify(
    db: DbOpt = None,
    anchors: Annotated[
        Path | None,
        typer.Option("--anchors", help="Anchor file of signed checkpoints to check the chain "
                     "against (default: the store's, $VISAGE_AUDIT_ANCHORS or beside a SQLite "
                     "file, when it exists)."),
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option("--public-key", help="The checkpoints' public key (ed25519:…), as pinned "
                     "from `visage audit public-key`; default: read from the signing key file."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Walk the hash chain and check it against the signed checkpoints; exit 1 naming the first
    broken link, or the cut when the chain ends before a checkpoint."""
    with _open(db, None, read=True) as g:
        report = g.verify_audit(anchors=anchors, public_key=public_key)
    if json_out:
        emit_json(report.__dict__)
        if not report.ok:
            raise typer.Exit(1)
        return
    if not report.ok:
        raise StorageError(report.describe())
    typer.echo(report.describe())


@audit_app.command("public-key")
def audit_public_key(db: DbOpt = None) -> None:
    """Print the public key that signs the audit checkpoints (created if missing): keep a copy
    off this host and pass it to `visage audit verify --public-key`."""
    with _open(db, None) as g:
        typer.echo(g.anchor_public_key())


@app.command("resync")
def resync(collection: CollectionOpt, index: IndexOpt, db: DbOpt = None,
           json_out: JsonOpt = False) -> None:
    """Rebuild a collection's index from the store (the store is the truth): after a Milvus
    was restored from an older backup, lost, or fell behind a crashed writer."""
    with _open(db, None, index=index) as g:
        count = g.resync_index(collection)
    if json_out:
        emit_json({"collection": collection, "index": index, "templates": count})
    else:
        typer.echo(f"{collection}: index {index} rebuilt from the store, {count} templates")


@app.command("migrate")
def migrate(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Bring the store's schema to this version's and exit; run once per upgrade as the role that
    owns the database, so the service's role needs no CREATE or ALTER rights (docs/gallery.md,
    "PostgreSQL roles"). Nothing is applied to a current store."""
    from ..store import database_url, default_url, migrate_store, shown_url

    url = database_url(db) if db else default_url()
    done = migrate_store(url)
    if json_out:
        emit_json({"store": shown_url(url), "before": done.before, "head": done.head,
                   "applied": list(done.applied)})
    elif done.applied:
        console.print(f"{shown_url(url)}: migrated from {done.before or 'an empty database'} to "
                      f"{done.head} (applied {', '.join(done.applied)})",
                      markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"{shown_url(url)}: the schema is current ({done.head}); nothing applied",
                      markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a bar on a terminal, for export/import."""
    if not enabled or not err_console.is_terminal:
        yield lambda done, total: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@app.command("export")
def export_collection(
    path: Annotated[Path, typer.Option("--out", "-o", help="Output file (JSON lines; no images).")],
    collection: CollectionOpt = "default",
    db: DbOpt = None,
    actor: ActorOpt = None,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a collection: persons, consent records and embeddings — never images."""
    with _open(db, actor) as g, _progress("exporting", not json_out) as progress:
        s = g.export_collection(collection, path, purpose=purpose, progress=progress)
    if json_out:
        emit_json({"collection": s.collection, "path": str(s.path), "persons": s.persons,
                   "templates": s.templates, "sha256": s.sha256})
    else:
        typer.echo(f"exported {s.persons} persons, {s.templates} templates to {printable(s.path)} "
                   f"(sha256 {s.sha256})")


@app.command("import")
def import_collection(
    path: Annotated[Path, typer.Argument(help="A file written by `visage export`.")],
    name: Annotated[str | None, typer.Option(
        "--collection", "-c", help="The new collection's name (default: the exported one's).")] = None,
    db: DbOpt = None,
    actor: ActorOpt = None,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import an exported collection into a new collection, streamed; it appears whole or not at all."""
    with _open(db, actor) as g, _progress("importing", not json_out) as progress:
        s = g.import_collection(path, name=name, purpose=purpose, progress=progress)
    if json_out:
        emit_json({"collection": s.collection, "persons": s.persons, "templates": s.templates,
                   "sha256": s.sha256})
    else:
        typer.echo(f"imported {s.persons} persons, {s.templates} templates into "
                   f"{printable(s.collection)!r}")
