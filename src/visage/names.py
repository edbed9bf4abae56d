"""File names (and other outside text) made safe to store and to show.

A POSIX file name is bytes. Python carries the bytes that are not UTF-8 as lone surrogates
(``surrogateescape``), which no UTF-8 encoder accepts: the audit hash, SQLite, Parquet and a
UTF-8 terminal all raise ``UnicodeEncodeError`` on them. Here such bytes become the text
``\\xff``, the same on every run, so a refusal naming the file can be audited and printed and
the batch goes on.
"""

from __future__ import annotations

import os

_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}
"""C0 controls and DEL, shown escaped: a name must not move the cursor or recolour a terminal."""


def utf8_text(name: str | os.PathLike[str] | bytes) -> str:
    """``name`` as text every UTF-8 encoder accepts: bytes that are not UTF-8 escaped as ``\\xNN``;
    text that already is UTF-8 comes back unchanged."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    text = os.fspath(name)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(text)  # undoes surrogateescape: the name's bytes as on disk
    except UnicodeEncodeError:  # a surrogate no file system made (e.g. from JSON "\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def printable(name: str | os.PathLike[str] | bytes) -> str:
    """:func:`utf8_text`, with control characters escaped too: for messages and tables."""
    return utf8_text(name).translate(_CONTROL)


def is_utf8(name: str) -> bool:
    """Whether the file name ``name`` is UTF-8 text (so it can be an identifier as it is)."""
    return utf8_text(name) == name
