"""The agent's folder and files are owner-only: the queue holds embeddings, the snapshot holds
names and templates. The store's modes (:data:`~visage.store.PRIVATE_FILE` 0600,
:data:`~visage.store.PRIVATE_DIR` 0700) apply, and unlike the store's an agent's folder
and files made looser before this rule are tightened whenever the agent opens them."""

from __future__ import annotations

import os
from pathlib import Path

from ..store import PRIVATE_DIR, PRIVATE_FILE, private_dir


def private_folder(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700, and tighten ``path`` itself to 0700."""
    private_dir(path)
    os.chmod(path, PRIVATE_DIR)


def private_file(path: Path, *, create: bool = False) -> None:
    """Tighten ``path`` to 0600 when it exists; with ``create``, make it (empty, 0600) first."""
    if create:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
    if path.exists():
        os.chmod(path, PRIVATE_FILE)
