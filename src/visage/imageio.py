"""Bytes or a path in, an RGB ``(h, w, 3) uint8`` array out — or a typed error.

Decoding is Pillow's. What this module adds is the policy a server needs: the pixel limit is
checked from the header before any pixel is decoded (a decompression bomb must not eat RAM),
so is the aspect ratio (a 1 x 39,000,000 strip is no photo and costs the detector minutes),
EXIF orientation is applied, every mode (grey, palette, RGBA, CMYK, 16-bit) becomes RGB, and
every failure is an :class:`~visage.errors.InvalidImage` naming its source.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ExtremeAspect, ImageTooLarge, InvalidImage
from .models.base import Image as ImageArray
from .names import printable

DEFAULT_MAX_PIXELS = 40_000_000
"""40 MP: above any phone camera, far below what would exhaust memory (~120 MB as RGB)."""

MAX_FILE_BYTES = 4 * DEFAULT_MAX_PIXELS + (1 << 20)
"""161 MB: an uncompressed 32-bit image at the pixel limit plus 1 MiB of headers and metadata,
the largest file an honest photo can be; a path over it is refused before it is read."""

MAX_ASPECT = 20.0
"""Longest side over shortest, at most: wider than any phone panorama (~10:1)."""

Source = str | Path | bytes | bytearray | memoryview

_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def read_bytes(
    src: Source | BinaryIO, *, max_bytes: int | None = None
) -> tuple[bytes, str | None]:
    """The raw bytes of ``src`` and a printable name for messages (``None`` for bytes).

    A path is read only when it is a regular file of at most ``max_bytes`` (default
    :data:`MAX_FILE_BYTES`), checked on the opened file before a byte is read: a symlink to
    ``/dev/zero`` or a FIFO is refused at once instead of read until memory runs out. An open
    binary file is read up to one byte past ``max_bytes``, refused if it has more. The name
    is :func:`visage.names.printable` (a name that is not UTF-8 comes back escaped).
    """
    limit = MAX_FILE_BYTES if max_bytes is None else max_bytes
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), None
    if isinstance(src, (str, Path)):
        path = Path(src)
        try:
            return _read_regular(path, limit), printable(path)
        except FileNotFoundError:
            raise InvalidImage("no such file", source=path) from None
        except OSError as exc:
            raise InvalidImage(f"cannot read: {exc.strerror or exc}", source=path) from None
    if hasattr(src, "read"):
        name = getattr(src, "name", None)
        shown = printable(name) if isinstance(name, (str, bytes)) else None
        try:
            return _read_at_most(src, limit, shown), shown
        except OSError as exc:
            raise InvalidImage(f"cannot read: {exc.strerror or exc}", source=shown) from None
    raise TypeError(f"expected a path, bytes or a binary file, got {type(src).__name__}")


def _read_at_most(fh: BinaryIO, max_bytes: int, source: str | Path | None) -> bytes:
    """What ``fh`` holds, read up to one byte past ``max_bytes``; :class:`InvalidImage` when it
    holds more (a file that grew, a stream with no end)."""
    data = fh.read(max_bytes + 1)
    if not isinstance(data, bytes):
        raise TypeError(f"expected a binary file, got one that reads {type(data).__name__}")
    if len(data) > max_bytes:
        raise InvalidImage(f"more than the limit of {max_bytes:,} bytes", source=source)
    return data


def _read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``; :class:`InvalidImage` for anything else or for a
    file over ``max_bytes`` (its size checked before reading, and again while reading, in case
    it grows). ``O_NONBLOCK``: opening a FIFO must not wait for a writer."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidImage("is a directory, not an image file", source=path)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidImage("not a regular file (a device, pipe or socket)", source=path)
        if info.st_size > max_bytes:
            raise InvalidImage(f"{info.st_size:,} bytes, over the limit of {max_bytes:,}",
                               source=path)
        return _read_at_most(fh, max_bytes, path)


def source_hash(data: bytes) -> str:
    """sha256 hex of the encoded bytes: identifies a source photo without keeping it."""
    return hashlib.sha256(data).hexdigest()


def media_type(data: bytes) -> str:
    """The MIME type of encoded image bytes from their header (a kept photo is served as it
    was sent); ``application/octet-stream`` when Pillow does not know the format."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return Image.MIME.get(im.format or "", "application/octet-stream")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return "application/octet-stream"


def load_image(src: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageArray:
    """Decode ``src`` (path or encoded bytes) to an RGB uint8 array with EXIF orientation applied.

    Raises :class:`InvalidImage` for empty, truncated, corrupt or non-image input,
    :class:`ImageTooLarge` when width x height exceeds ``max_pixels`` and
    :class:`ExtremeAspect` when one side is over :data:`MAX_ASPECT` times the other.
    """
    data, name = read_bytes(src)
    return decode(data, max_pixels=max_pixels, source=name)


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str | None = None) -> ImageArray:
    """Decode encoded image bytes; see :func:`load_image`."""
    with strict_image(data, max_pixels=max_pixels, source=source) as im:
        # In place: otherwise Pillow copies every photo that has no orientation to undo
        # (0.17 ms of a 250x250 photo's 0.9 ms decode; 36 MB for a 12 MP one).
        ImageOps.exif_transpose(im, in_place=True)
        return _to_rgb(im)


@contextmanager
def strict_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str | None = None
) -> Iterator[Image.Image]:
    """Pillow's image of ``data``, its first frame decoded, for the block to convert.

    The header is checked before any pixel is decoded (``max_pixels``, :data:`MAX_ASPECT`);
    the pixels are loaded strictly, so truncated data is an error whatever Pillow's global
    switch says; a failure inside the block (decoding, orientation, conversion) is an
    :class:`InvalidImage` too. Raises as :func:`load_image` does.
    """
    if not data:
        raise InvalidImage("empty file", source=source)
    with warnings.catch_warnings():
        # Our own limit replaces Pillow's DecompressionBombWarning/Error.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im: Image.Image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise InvalidImage("not a recognised image format", source=source) from None
        except Image.DecompressionBombError as exc:
            # Pillow's own guard fires in open() past 2x its limit; report it as ours.
            found = re.search(r"\((\d+) pixels\)", str(exc))
            raise ImageTooLarge(int(found.group(1)) if found else -1, max_pixels, source=source) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidImage(f"unreadable header: {exc}", source=source) from None
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"bad dimensions {width}x{height}", source=source)
        if width * height > max_pixels:
            raise ImageTooLarge(width * height, max_pixels, source=source)
        if max(width, height) > MAX_ASPECT * min(width, height):
            raise ExtremeAspect(width, height, MAX_ASPECT, source=source)
        # Pillow's truncation switch is process-global and other libraries flip it at import
        # (face_recognition sets it True): force strict loading here so a truncated file is
        # always an error, never a silently grey-filled image.
        lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            im.seek(0)  # first frame of animated GIF/WebP/TIFF
            im.load()
            yield im
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise InvalidImage(f"corrupt or truncated data: {exc}", source=source) from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _to_rgb(im: Image.Image) -> ImageArray:
    """Convert any Pillow mode to RGB uint8, scaling 16/32-bit grey rather than clipping it."""
    if im.mode in _HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode != "I" or arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent areas become white rather than whatever colour hides under alpha 0.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def shrink(image: ImageArray, max_side: int) -> ImageArray:
    """``image`` scaled down so its longest side is ``max_side`` (unchanged when it already is).

    ``reducing_gap=1`` box-reduces by the whole factor first and filters only the rest: 0.09 s
    from 40 MP to 2048 px, half a plain bilinear resize, for a copy only the detector sees.
    """
    height, width = image.shape[:2]
    side = max(height, width)
    if side <= max_side:
        return image
    size = (max(1, round(width * max_side / side)), max(1, round(height * max_side / side)))
    small = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)
    return np.ascontiguousarray(np.asarray(small, dtype=np.uint8))
