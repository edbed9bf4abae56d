"""Ed25519 signing keys, kept one way for everything Visage signs (edge snapshots, audit checkpoints).

A private key is a PEM (PKCS#8) file with owner-only permissions; a public key is written
``ed25519:<base64 of the 32 raw bytes>`` and named by :func:`key_id`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import InputError, StorageError

KEY_PREFIX = "ed25519:"


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def load_signing_key(path: str | Path, *, create: bool = False) -> Ed25519PrivateKey:
    """The server's signing key from a PEM (PKCS#8) file; with ``create``, made when missing
    (owner-only permissions, written to a temporary file and renamed)."""
    file = Path(path)
    try:
        if create and not file.exists():
            key = generate_signing_key()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, file)  # never replaces a key another process created meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        loaded = serialization.load_pem_private_key(file.read_bytes(), password=None)
    except OSError as exc:
        raise StorageError(f"cannot read the signing key {file}: {exc}") from exc
    except ValueError as exc:
        raise InputError(f"{file} is not a PEM private key: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise InputError(f"{file} is not an Ed25519 key")
    return loaded


def public_key_text(key: Ed25519PublicKey) -> str:
    """``ed25519:<base64 of the 32 raw bytes>`` — short enough to paste into a device config."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The key written by :func:`public_key_text`; :class:`InputError` for anything else."""
    value = text.strip()
    if not value.startswith(KEY_PREFIX):
        raise InputError(f"an Ed25519 public key starts with {KEY_PREFIX!r}")
    try:
        return Ed25519PublicKey.from_public_bytes(
            base64.b64decode(value[len(KEY_PREFIX) :], validate=True)
        )
    except (ValueError, binascii.Error):
        raise InputError("not a valid Ed25519 public key") from None


def key_id(key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the raw key's sha256: names the key in documents and logs."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
