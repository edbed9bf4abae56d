"""Finding the photos under a folder without being led out of it.

The one policy for every command that takes a folder of photos (``visage enroll``, ``embed``,
``group``): a symbolic link whose target lies outside the folder given is not followed unless
the user asks (``--follow-symlinks``); only regular files are photos (a device, FIFO or socket
named ``z.jpg`` is reported, never read); the walk keeps its own stack, so a folder nested
thousands deep is searched without a ``RecursionError``, and a folder reached twice (a link
loop) is searched once. What is left out is returned with why, for the command to report.
The size of each photo is checked when it is read (:func:`visage.imageio.read_bytes`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .names import printable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}

Kind = Literal["folder", "photo", "other", "refused"]


def skip(path: str | Path, reason: str) -> dict[str, str]:
    """What a command reports for a path it leaves out: the path (printable) and why."""
    return {"path": printable(path), "reason": reason}


@dataclass(frozen=True)
class Entry:
    """One entry of a folder: a ``folder`` to search, a ``photo`` to read, ``other`` (not an
    image: ignored) or ``refused`` with ``reason``."""

    path: Path
    kind: Kind
    reason: str = ""

    def skipped(self) -> dict[str, str]:
        return skip(self.path, self.reason)


class PhotoRoot:
    """The folder photos are taken from, and how far its symbolic links may lead."""

    def __init__(self, folder: Path, *, follow_symlinks: bool = False) -> None:
        self.folder = folder
        self.real = os.path.realpath(folder)
        self.follow_symlinks = follow_symlinks

    def entries(self, folder: Path) -> list[Entry]:
        """The entries of ``folder`` (inside this root) sorted by name; ``OSError`` when it
        cannot be listed."""
        with os.scandir(folder) as found:
            listed = sorted(found, key=lambda e: e.name)
        return [self._entry(e) for e in listed]

    def _entry(self, entry: os.DirEntry[str]) -> Entry:
        path = Path(entry.path)
        if entry.is_symlink() and not self.follow_symlinks:
            target = os.path.realpath(path)
            if os.path.commonpath([self.real, target]) != self.real:
                return Entry(
                    path,
                    "refused",
                    f"a symbolic link out of {printable(self.folder)} "
                    f"(to {printable(target)}): not followed; pass --follow-symlinks "
                    "to follow it",
                )
        if entry.is_dir():
            return Entry(path, "folder")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return Entry(path, "other")
        if not entry.is_file():
            return Entry(
                path,
                "refused",
                "not a regular file (a device, pipe or socket, or a broken link): not read",
            )
        return Entry(path, "photo")


def photo_files(
    inputs: Sequence[Path], *, follow_symlinks: bool = False
) -> tuple[list[Path], list[dict[str, str]]]:
    """Files given directly, plus the photos found at any depth in the folders given (each
    folder's sorted), and what was left out with why (see the module's rules)."""
    found: list[Path] = []
    skipped: list[dict[str, str]] = []
    for item in inputs:
        if not item.is_dir():
            found.append(item)  # named on the command line: read as given, refused if not a photo
            continue
        root = PhotoRoot(item, follow_symlinks=follow_symlinks)
        photos: list[Path] = []
        seen: set[tuple[int, int]] = set()
        stack = [item]
        while stack:
            folder = stack.pop()
            try:
                info = folder.stat()
                if (info.st_dev, info.st_ino) in seen:
                    skipped.append(skip(folder, "a folder already searched (a link loop)"))
                    continue
                seen.add((info.st_dev, info.st_ino))
                entries = root.entries(folder)
            except OSError as exc:
                skipped.append(skip(folder, f"cannot be read: {exc.strerror or exc}"))
                continue
            photos += [e.path for e in entries if e.kind == "photo"]
            skipped += [e.skipped() for e in entries if e.kind == "refused"]
            stack += [e.path for e in reversed(entries) if e.kind == "folder"]
        found += sorted(photos)
    return found, skipped
