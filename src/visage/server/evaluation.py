"""``eval verify`` and ``eval identify`` on uploaded files: the protocol's list(s) and a zip of
the photos they name.

The archive is extracted into a temporary folder that is removed when the run ends, whatever
happens (:func:`_extracted`, the one place both runs go through): the photos and their
embeddings are never kept, only the report (numbers and figures) of the last run, in a file
beside the store (:class:`LastReport`). Everything an upload can make the server do is bounded
before or while it is done:

- the body by the server's ``max_body_bytes`` (:mod:`.limits`, 413 before it is read past);
- the archive by :data:`MAX_MEMBERS` entries and :data:`MAX_EXTRACTED_BYTES` extracted, counted
  as the bytes come out of the decompressor (a zip bomb's headers can lie), never from headers;
- names: an absolute path, a ``..`` part, a backslash or a symbolic link is refused;
- the work by :data:`MAX_PAIRS` pairs, or :data:`MAX_ENTRIES` gallery and probe lines (at
  most 2000 photos to embed either way).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from ..errors import InputError, StorageError
from ..eval.plots import identification_figures, verification_figures
from ..eval.protocols import pair_photos, read_identification_list, read_pairs
from ..eval.results import identify_lists, verify_pairs
from ..pipeline import Pipeline
from ..store import private_dir, private_temporary, sqlite_path
from .bodies import Upload

MAX_MEMBERS = 5000
"""Most entries (files and folders) in a photos archive."""
MAX_EXTRACTED_BYTES = 200 * 1024 * 1024
"""Most bytes the photos archive may extract to, all members together."""
MAX_PAIRS = 1000
"""Most pairs in one run: up to 2000 photos, about 80 s at 40 ms a photo."""
MAX_ENTRIES = 2 * MAX_PAIRS
"""Most lines of an identification's gallery and probe lists together: the photos a verify
run may embed at most."""
CHUNK = 64 * 1024
_SYMLINK = 0o120000

Kind = Literal["verify", "identify"]
"""Which protocol a report is of: ``visage eval verify`` or ``visage eval identify``."""

REPORT_FILE = "last-report.json"
"""The last report's file in the report folder (see :class:`LastReport`)."""
_FORMAT = 1


@dataclass(frozen=True)
class Report:
    """The last run's report: its protocol, the CLI's JSON (``as_dict``), its PNG figures by
    name, and when and by whom it was made."""

    kind: Kind
    document: dict[str, Any]
    figures: dict[str, bytes]
    created_at: datetime
    actor: str


def report_folder(db_url: str, configured: Path | None = None) -> Path | None:
    """Where the last report is kept: ``configured``, else an ``.eval`` folder beside a SQLite
    store's file (as its ``.index`` folder is), else ``None``: this process's memory only."""
    if configured is not None:
        return configured
    db_file = sqlite_path(db_url)
    return None if db_file is None else db_file.with_name(db_file.name + ".eval")


class LastReport:
    """The most recent report and its audit event's seq, replaced by each successful run.

    With a ``folder`` the report is one owner-only file there (:data:`REPORT_FILE`, written to a
    temporary file, fsynced and renamed over the last), so every worker process on the store
    and a restarted server answer the same one. The figures are inside it (base64): one rename
    replaces numbers and figures together, so no reader sees one run's numbers beside another's
    figures. It holds what the route answers, never a photo or an embedding. Without a folder
    the report stays in this process's memory.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._last: tuple[Report, int] | None = None
        # (inode, mtime, size) of the file _last was read from: read again when they change.
        self._read: tuple[int, int, int] | None = None

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / REPORT_FILE

    def get(self) -> tuple[Report, int] | None:
        """The last report and its seq; ``None`` before any run. :class:`StorageError` when
        the file cannot be read."""
        with self._lock:
            if self.path is None:
                return self._last
            try:
                with open(self.path, "rb") as fh:
                    info = os.fstat(fh.fileno())
                    seen = (info.st_ino, info.st_mtime_ns, info.st_size)
                    if seen != self._read:
                        self._last, self._read = _decode(fh.read(), self.path), seen
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise StorageError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
            return self._last

    def set(self, report: Report, seq: int) -> None:
        """Keep ``report`` as the last one (on disk first: a report not saved is not kept)."""
        with self._lock:
            if self.path is not None:
                _save(self.path, _encode(report, seq))
                self._read = None
            self._last = (report, seq)


def _encode(report: Report, seq: int) -> bytes:
    return json.dumps(
        {
            "format": _FORMAT,
            "kind": report.kind,
            "created_at": report.created_at.isoformat(),
            "actor": report.actor,
            "audit_seq": seq,
            "report": report.document,
            "figures": {k: base64.b64encode(v).decode("ascii") for k, v in report.figures.items()},
        }
    ).encode("utf-8")


def _decode(data: bytes, path: Path) -> tuple[Report, int]:
    try:
        saved = json.loads(data)
        if saved.get("format") != _FORMAT or saved["kind"] not in ("verify", "identify"):
            raise ValueError(f"format {saved.get('format')!r}, kind {saved.get('kind')!r}")
        figures = {k: base64.b64decode(v, validate=True) for k, v in saved["figures"].items()}
        report = Report(
            saved["kind"],
            dict(saved["report"]),
            figures,
            datetime.fromisoformat(saved["created_at"]),
            str(saved["actor"]),
        )
        return report, int(saved["audit_seq"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise StorageError(f"{path} is not a report this server wrote: {exc}") from None


def _save(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path``: owner-only, through a temporary file fsynced and renamed into
    place, then the folder fsynced, so a crash leaves the old report or the new, never part."""
    try:
        private_dir(path.parent)
        with private_temporary(path) as (tmp, fh):
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except (OSError, InputError) as exc:  # private_temporary: InputError for an unwritable folder
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise StorageError(f"cannot keep the evaluation report in {path.parent}: {reason}") from exc


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path, or an :class:`InputError` for a name that could leave the
    extraction folder (absolute, ``..``, backslash, drive) or a symbolic link."""
    name = info.filename
    parts = PurePosixPath(name).parts
    if (info.external_attr >> 16) & 0o170000 == _SYMLINK:
        raise InputError(f"photos archive: {name!r} is a symbolic link; send the photos")
    if (
        not parts
        or name.startswith("/")
        or "\\" in name
        or ".." in parts
        or ":" in parts[0]
        or "\x00" in name
    ):
        raise InputError(f"photos archive: member name {name!r} is not a relative path inside it")
    return PurePosixPath(*parts)


def _copy(source: IO[bytes], target: Path, budget: int) -> int:
    """Copy ``source`` to a new file ``target``, at most ``budget`` bytes; returns bytes left."""
    with open(target, "xb") as out:
        while chunk := source.read(CHUNK):
            budget -= len(chunk)
            if budget < 0:
                raise InputError(
                    f"photos archive: extracts to more than {MAX_EXTRACTED_BYTES:,} bytes"
                )
            out.write(chunk)
    return budget


def extract_zip(data: IO[bytes], into: Path) -> None:
    """Extract the zip ``data`` under ``into``, refusing what the module docstring lists."""
    try:
        archive = zipfile.ZipFile(data)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise InputError("photos: not a zip archive (send the photos folder as a .zip)") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise InputError(f"photos archive: {len(members)} entries, more than {MAX_MEMBERS}")
        budget = MAX_EXTRACTED_BYTES
        for info in members:
            target = into / _member_path(info)
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source:
                    budget = _copy(source, target, budget)
            except FileExistsError:
                raise InputError(
                    f"photos archive: {info.filename!r} appears twice, or a file stands where "
                    "its folder would be"
                ) from None
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise InputError(f"photos archive is corrupt at {info.filename!r}: {exc}") from None
            except (NotImplementedError, RuntimeError) as exc:  # a method zipfile lacks; a password
                raise InputError(
                    f"photos archive: cannot extract {info.filename!r}: {exc}"
                ) from None
            except OSError as exc:
                raise InputError(
                    f"photos archive: cannot extract {info.filename!r}: {exc.strerror}"
                ) from None


def _root(folder: Path) -> Path:
    """The photos' root: the archive's one top folder when it holds nothing else (a zipped
    folder), else the archive itself."""
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _check_photos(photos: Iterable[Path], root: Path, named_by: str) -> None:
    """Every photo the protocol names is a file inside the archive (never a path out of it)."""
    inside = root.resolve()
    missing = [  # is_file() first: resolve() raises on a NUL byte, is_file() says False
        p
        for p in dict.fromkeys(photos)
        if not p.is_file() or not p.resolve().is_relative_to(inside)
    ]
    if missing:
        first = ", ".join(str(_relative(p, root)) for p in missing[:3])
        raise InputError(
            f"{named_by} name {len(missing)} photo(s) not in the archive, first: {first}"
        )


def _relative(path: Path, root: Path) -> Path | str:
    return path.relative_to(root) if path.is_relative_to(root) else path.name


@contextmanager
def _worded(scratch: Path) -> Iterator[None]:
    """Errors name files as the caller sent them, not by their temporary paths: photos by
    their path in the archive, the pairs file by its name, a gallery or probe list as
    ``gallery/<name>`` or ``probes/<name>`` (both may have one name)."""
    try:
        yield
    except InputError as exc:
        message = str(exc)
        for prefix in (f"{scratch}/photos/", f"{scratch}/pairs/", f"{scratch}/"):
            message = message.replace(prefix, "")
        raise InputError(message) from None


def _file_name(filename: str | None, default: str) -> str:
    """An uploaded list's own name (a pairs file's suffix chooses its format: ``.csv`` or LFW)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name[:200]
    return name if name not in ("", ".", "..") else default


@dataclass(frozen=True)
class _Run:
    """A run's temporary folder: the photos' root and each uploaded list's file by its field."""

    folder: Path
    root: Path
    files: dict[str, Path]


@contextmanager
def _extracted(
    archive: IO[bytes], lists: Mapping[str, tuple[bytes, str]], scratch: Path | None
) -> Iterator[_Run]:
    """A temporary folder (under ``scratch``, default the system's) holding the archive
    extracted under ``photos/`` and each list as ``<field>/<name>``, removed when the block
    ends or raises; an :class:`InputError` in the block names files as sent (:func:`_worded`).
    Both runs go through it: one extraction, one set of limits, one clean-up."""
    with tempfile.TemporaryDirectory(prefix="visage-eval-", dir=scratch) as made:
        folder = Path(made)
        with _worded(folder):
            (folder / "photos").mkdir()
            extract_zip(archive, folder / "photos")
            files: dict[str, Path] = {}
            for field, (data, name) in lists.items():
                (folder / field).mkdir()
                files[field] = folder / field / name
                files[field].write_bytes(data)
            yield _Run(folder, _root(folder / "photos"), files)


def run_verify(
    pairs: Upload,
    archive: IO[bytes],
    pipeline: Pipeline,
    *,
    actor: str,
    scratch: Path | None = None,
) -> Report:
    """Extract, read, run :func:`~visage.eval.results.verify_pairs` (what ``visage eval
    verify`` runs) and draw its figures; the temporary folder (under ``scratch``, default the
    system's) is gone when this returns or raises. Blocking: seconds per hundred photos."""
    name = _file_name(pairs.filename, "pairs.txt")
    with _extracted(archive, {"pairs": (pairs.data, name)}, scratch) as run:
        protocol = read_pairs(run.files["pairs"], run.root)
        if len(protocol) > MAX_PAIRS:
            raise InputError(f"{name}: {len(protocol)} pairs, more than {MAX_PAIRS} in one run")
        _check_photos(pair_photos(protocol), run.root, "the pairs")
        result = verify_pairs(protocol, pipeline, protocol=name)
        document = result.as_dict()
        for miss in document["misses"]:
            miss["a"], miss["b"] = (str(_relative(Path(miss[k]), run.root)) for k in ("a", "b"))
        figures = verification_figures(result)
    return Report("verify", document, figures, datetime.now(UTC), actor)


def run_identify(
    gallery: Upload,
    probes: Upload,
    archive: IO[bytes],
    pipeline: Pipeline,
    *,
    actor: str,
    scratch: Path | None = None,
) -> Report:
    """Extract, read both ``person path`` lists (paths relative to the archive's root), run
    :func:`~visage.eval.results.identify_lists` (what ``visage eval identify`` runs, its
    throw-away gallery inside the run's folder) and draw its figures (CMC first); the temporary
    folder is gone when this returns or raises. Blocking: seconds per hundred photos."""
    lists = {
        "gallery": (gallery.data, _file_name(gallery.filename, "gallery.txt")),
        "probes": (probes.data, _file_name(probes.filename, "probes.txt")),
    }
    with _extracted(archive, lists, scratch) as run:
        enrol = read_identification_list(run.files["gallery"], run.root)
        search = read_identification_list(run.files["probes"], run.root)
        if len(enrol) + len(search) > MAX_ENTRIES:
            raise InputError(
                f"{len(enrol)} gallery and {len(search)} probe lines, more than {MAX_ENTRIES} "
                "in one run"
            )
        _check_photos((e.path for e in [*enrol, *search]), run.root, "the lists")
        result = identify_lists(enrol, search, pipeline, scratch=run.folder)
        document = result.as_dict()
        figures = identification_figures(result)
    return Report("identify", document, figures, datetime.now(UTC), actor)


def input_hash(*parts: bytes) -> str:
    """The audit event's hash of what was sent (each part hashed, then the hashes)."""
    digests = b"".join(hashlib.sha256(part).digest() for part in parts)
    return hashlib.sha256(digests).hexdigest()
