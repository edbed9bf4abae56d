"""Looking at a SQLite store from outside: its files and which of them hold given bytes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text


def store_files(db: Path) -> list[Path]:
    """Every file of the store at ``db``: the database, its ``-wal`` and ``-shm``, and each file
    of its index folder (snapshots and their temporary files)."""
    found = [p for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
             if p.exists()]
    index = db.with_name(db.name + ".index")
    if index.is_dir():
        found += sorted(p for p in index.iterdir() if p.is_file())
    return found


def holders(db: Path, blobs: list[bytes]) -> dict[str, int]:
    """File name -> how many copies of any of ``blobs`` it holds, for the files holding one."""
    return _holding(store_files(db), blobs, lambda path: path.name)


def folder_holders(folder: Path, blobs: list[bytes]) -> dict[str, int]:
    """:func:`holders` for every file under ``folder`` (named relative to it): a Milvus data
    folder's write-ahead logs, segment, tombstone and index files."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _holding(files, blobs, lambda path: str(path.relative_to(folder)))


def _holding(files: list[Path], blobs: list[bytes], name: Callable[[Path], str]) -> dict[str, int]:
    counts = {}
    for path in files:
        data = path.read_bytes()
        copies = sum(data.count(blob) for blob in blobs)
        if copies:
            counts[name(path)] = copies
    return counts


def stored_embeddings(url: str, where: str, **params: object) -> list[bytes]:
    """The embedding bytes the store wrote for ``template`` rows matching ``where`` (the
    normalised vectors, exactly as stored), read straight from the database."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT embedding FROM template WHERE {where}"), params)
            return [bytes(r[0]) for r in rows]
    finally:
        engine.dispose()


def stored_ids(url: str, sql: str) -> list[int]:
    """The integers ``sql`` selects, read straight from the database."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()
