"""``eval verify`` on uploaded files: a pairs file and a zip of the photos it names.

The archive is extracted into a temporary folder that is removed when the run ends, whatever
happens: the photos and their embeddings are never kept, only the report (numbers and figures)
of the last run, in this process's memory. Everything an upload can make the server do is
bounded before or while it is done:

- the body by the server's ``max_body_bytes`` (:mod:`.limits`, 413 before it is read past);
- the archive by :data:`MAX_MEMBERS` entries and :data:`MAX_EXTRACTED_BYTES` extracted, counted
  as the bytes come out of the decompressor (a zip bomb's headers can lie), never from headers;
- names: an absolute path, a ``..`` part, a backslash or a symbolic link is refused;
- the work by :data:`MAX_PAIRS` pairs (at most twice that many photos to embed).
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ..errors import InputError
from ..eval.plots import verification_figures
from ..eval.protocols import Pair, pair_photos, read_pairs
from ..eval.results import verify_pairs
from ..pipeline import Pipeline

MAX_MEMBERS = 5000
"""Most entries (files and folders) in a photos archive."""
MAX_EXTRACTED_BYTES = 200 * 1024 * 1024
"""Most bytes the photos archive may extract to, all members together."""
MAX_PAIRS = 1000
"""Most pairs in one run: up to 2000 photos, about 80 s at 40 ms a photo."""
CHUNK = 64 * 1024
_SYMLINK = 0o120000


@dataclass(frozen=True)
class Report:
    """The last run's report: the CLI's JSON (``as_dict``), its PNG figures by name, and when
    and by whom it was made."""

    document: dict[str, Any]
    figures: dict[str, bytes]
    created_at: datetime
    actor: str


class LastReport:
    """The most recent report of this process and its audit event's seq, replaced by each
    successful run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[Report, int] | None = None

    def get(self) -> tuple[Report, int] | None:
        with self._lock:
            return self._last

    def set(self, report: Report, seq: int) -> None:
        with self._lock:
            self._last = (report, seq)


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


def _check_photos(pairs: list[Pair], root: Path) -> None:
    """Every photo the pairs name is a file inside the archive (never a path out of it)."""
    inside = root.resolve()
    missing = [  # is_file() first: resolve() raises on a NUL byte, is_file() says False
        p for p in pair_photos(pairs) if not p.is_file() or not p.resolve().is_relative_to(inside)
    ]
    if missing:
        first = ", ".join(str(_relative(p, root)) for p in missing[:3])
        raise InputError(
            f"the pairs name {len(missing)} photo(s) not in the archive, first: {first}"
        )


def _relative(path: Path, root: Path) -> Path | str:
    return path.relative_to(root) if path.is_relative_to(root) else path.name


@contextmanager
def _worded(scratch: Path) -> Iterator[None]:
    """Errors name files as the caller sent them, not by their temporary paths."""
    try:
        yield
    except InputError as exc:
        raise InputError(
            str(exc).replace(f"{scratch}/photos/", "").replace(f"{scratch}/", "")
        ) from None


def _pairs_name(filename: str | None) -> str:
    """The uploaded pairs file's own name (its suffix chooses the format: ``.csv`` or LFW)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name[:200]
    return name if name not in ("", ".", "..") else "pairs.txt"


def run_verify(
    pairs_file: bytes,
    pairs_filename: str | None,
    archive: IO[bytes],
    pipeline: Pipeline,
    *,
    actor: str,
    scratch: Path | None = None,
) -> Report:
    """Extract, read, run :func:`~visage.eval.results.verify_pairs` (what ``visage eval
    verify`` runs) and draw its figures; the temporary folder (under ``scratch``, default the
    system's) is gone when this returns or raises. Blocking: seconds per hundred photos."""
    name = _pairs_name(pairs_filename)
    with tempfile.TemporaryDirectory(prefix="visage-eval-", dir=scratch) as made:
        folder = Path(made)
        with _worded(folder):
            (folder / "photos").mkdir()
            extract_zip(archive, folder / "photos")
            (folder / name).write_bytes(pairs_file)
            root = _root(folder / "photos")
            pairs = read_pairs(folder / name, root)
            if len(pairs) > MAX_PAIRS:
                raise InputError(f"{name}: {len(pairs)} pairs, more than {MAX_PAIRS} in one run")
            _check_photos(pairs, root)
            result = verify_pairs(pairs, pipeline, protocol=name)
        document = result.as_dict()
        for miss in document["misses"]:
            miss["a"], miss["b"] = (str(_relative(Path(miss[k]), root)) for k in ("a", "b"))
        figures = verification_figures(result)
    return Report(document, figures, datetime.now(UTC), actor)


def input_hash(*parts: bytes) -> str:
    """The audit event's hash of what was sent (each part hashed, then the hashes)."""
    digests = b"".join(hashlib.sha256(part).digest() for part in parts)
    return hashlib.sha256(digests).hexdigest()
