"""The store's files on disk: owner-only folders and files, temporary files that never write
through a planted link, and erasing what SQLite's write-ahead log still holds after a delete."""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sqlalchemy import (
    Engine,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import InputError, StorageError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30
"""How long a SQLite connection waits for another's lock before it fails."""


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; ``None`` for in-memory SQLite and other backends."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


PRIVATE_FILE = 0o600
"""Mode of every file the store writes (database, snapshots, exports): owner only."""
PRIVATE_DIR = 0o700
"""Mode of every folder the store creates (the database's folder, the index folder)."""

def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents owner-only (:data:`PRIVATE_DIR`); folders that
    exist are left as they are."""
    for folder in reversed([p for p in (path, *path.parents) if not p.exists()]):
        folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def open_private(path: Path) -> IO[bytes]:
    """``path`` opened for writing, truncated and owner-only (:data:`PRIVATE_FILE`), even when a
    file of looser mode was already there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def private_temporary(dest: Path) -> Iterator[tuple[Path, IO[bytes]]]:
    """A new owner-only file beside ``dest`` (the same folder, so it can be renamed over
    ``dest``), yielded with its path and open for writing; removed if the block fails.

    Its name is random and it is opened ``O_CREAT | O_EXCL | O_NOFOLLOW``: whatever already
    lies in a shared folder (a link planted at ``dest.tmp``) is never written through.
    :class:`InputError` when the folder cannot take it (missing, not writable).
    """
    path = dest.with_name(f"{dest.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except OSError as exc:
        raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield path, fh
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def erase_journal(engine: Engine, *, wait_s: float = BUSY_TIMEOUT_S) -> bool:
    """Copy SQLite's write-ahead log into the database file and truncate it to zero bytes;
    ``False`` when readers still held it after ``wait_s``.

    Called after a transaction that erased biometric data commits: ``secure_delete`` zeroes the
    rows in the file, but the ``-wal`` keeps earlier images of their pages until it is truncated,
    which SQLite can only do once no reader holds a snapshot from before. It answers at once
    while another connection (another process's erasure or automatic checkpoint) is
    checkpointing, so this retries every 10 ms. ``True`` at once for in-memory SQLite and other
    backends; :class:`StorageError` when the database fails.
    """
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is None:
        return True
    deadline = time.monotonic() + wait_s
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(min(wait_s, BUSY_TIMEOUT_S) * 1000)}")
            try:
                while cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.01)
            finally:
                cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        finally:
            raw.close()
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise StorageError(f"the erasure is committed, but {path.name}-wal was not truncated: {exc}") from exc
    return True


class JournalEraser:
    """Truncates the write-ahead log after each erasure, at once when no reader is open, else
    the moment the readers that predate it are gone.

    A read that began before the erasure (an export, an edge snapshot, a search) still sees the
    erased rows, so their old page images must stay in the ``-wal`` until it ends. An erasure
    waits up to ``WAIT_S`` for such readers, then hands the truncation to one background thread
    that retries until it succeeds; :meth:`close` makes a last attempt and reports a failure.
    """

    WAIT_S = 2.0

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def erase(self) -> None:
        """Truncate now, or as soon as the readers from before this erasure are gone."""
        if erase_journal(self._engine, wait_s=self.WAIT_S):
            return
        log.warning("a reader holds the write-ahead log: it is truncated as soon as it ends")
        with self._lock:
            self._pending.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._sweep, name="visage-wal", daemon=True)
                self._thread.start()

    @property
    def pending(self) -> bool:
        """Whether an erasure still waits for readers to end."""
        return self._pending.is_set()

    def _sweep(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._pending.is_set():
                    self._thread = None
                    return
                self._pending.clear()
            try:
                done = erase_journal(self._engine, wait_s=1.0)
            except StorageError as exc:
                log.error("%s", exc)
                done = False
            if not done:
                self._pending.set()
                self._stop.wait(0.05)

    def close(self) -> None:
        """Stop the background retries and truncate once more; :class:`StorageError` when an
        erasure's old page images could not be removed."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join()
        if self._pending.is_set() and not erase_journal(self._engine):
            path = sqlite_path(self._engine.url.render_as_string(hide_password=False))
            raise StorageError(
                f"{path.name if path else 'the store'}-wal still holds erased data: a reader "
                "kept it open past shutdown"
            )


