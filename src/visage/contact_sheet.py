"""A grouping as one self-contained HTML page: ``visage group DIR --sheet out.html``.

One section per group (largest first), then the faces that joined no group; each face a small
JPEG thumbnail cropped from its photo by its box, inlined as a ``data:`` URL, captioned with its
file name. The page states the group rule and the precision to expect. Every string (file
names are hostile input) goes through :func:`html.escape`, and the page's Content-Security-
Policy allows no script and no fetch at all, so a name that slipped through would still be
inert. Nothing else is kept: no thumbnail cache. Written owner-only, renamed into place
(:func:`visage.groupfile.write_private`): the thumbnails are faces.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

from PIL import Image as PILImage

from .errors import VisageError
from .groupfile import Box, GroupedFaces, write_private
from .imageio import load_image

THUMB = 96
"""Thumbnail side in pixels (the longer side of the crop is scaled to it)."""

MARGIN = 0.25
"""Share of the box's size added around it on each side, so the thumbnail shows the head."""

STYLE = (
    "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}"
    ".faces{display:flex;flex-wrap:wrap;gap:8px}"
    "figure{margin:0;width:104px;text-align:center}"
    "figure img{width:96px;height:96px;object-fit:cover;background:#ddd}"
    "figcaption{font-size:11px;overflow-wrap:anywhere}"
    ".gone{display:flex;width:96px;height:96px;align-items:center;background:#eee;font-size:10px}"
)
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def thumbnail(image: PILImage.Image, box: Box) -> str:
    """The face at ``box`` of ``image`` (with :data:`MARGIN`), scaled to :data:`THUMB` px, as
    a ``data:image/jpeg;base64`` URL."""
    left, top, right, bottom = box
    pad_x, pad_y = (right - left) * MARGIN, (bottom - top) * MARGIN
    crop = image.crop((max(int(left - pad_x), 0), max(int(top - pad_y), 0),
                       min(int(right + pad_x), image.width), min(int(bottom + pad_y), image.height)))  # fmt: skip
    crop.thumbnail((THUMB, THUMB))
    out = io.BytesIO()
    crop.convert("RGB").save(out, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _thumbnails(grouped: GroupedFaces) -> list[str | None]:
    """A thumbnail URL per face, or ``None`` where its photo can no longer be read; each photo
    is decoded once (with the pipeline's pixel limit)."""
    out: list[str | None] = [None] * len(grouped.photos)
    rows_of: dict[str, list[int]] = {}
    for row, photo in enumerate(grouped.photos):
        rows_of.setdefault(photo, []).append(row)
    for photo, rows in rows_of.items():
        try:
            image = PILImage.fromarray(load_image(Path(photo)))
        except (VisageError, OSError):
            continue
        for row in rows:
            out[row] = thumbnail(image, grouped.boxes[row])
    return out


def _figure(grouped: GroupedFaces, row: int, thumb: str | None) -> str:
    name = escape(Path(grouped.photos[row]).name)
    where = escape(f"{grouped.photos[row]} at {grouped.boxes[row]}")
    picture = (f'<img src="{thumb}" alt="{name}">' if thumb
               else '<span class="gone">photo no longer readable</span>')  # fmt: skip
    return f'<figure title="{where}">{picture}<figcaption>{name}</figcaption></figure>'


def expected_line(expected: dict[str, float] | None) -> str:
    """The ``expected`` numbers of a grouping in words (``visage.grouping.expected_precision``)."""
    if expected is None:
        return "not known (no calibration for this model, or a grouping read back from a file)"
    return (f"BCubed precision {expected['bcubed_precision']:.3f} "
            f"({expected['false_edges_per_face']:.3f} false edges per face expected at this "
            "threshold and number of faces)")  # fmt: skip


def render(grouped: GroupedFaces) -> str:
    """The whole page as text."""
    thumbs = _thumbnails(grouped)
    groups = grouped.grouping.groups
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        f"<title>Faces grouped by person</title><style>{STYLE}</style></head><body>",
        "<h1>Faces grouped by person</h1>",
        (
            f"<p>{len(grouped.photos)} faces: {len(groups)} groups and {len(grouped.grouping.messy)}"
            f" faces like no other (model {escape(grouped.model_id)}).</p>"
        ),
        (
            f"<p><b>Rule:</b> two faces are joined by an {escape(grouped.rule)}; Chinese "
            "whispers then gives each face the group most of its joined faces hold.</p>"
        ),
        f"<p><b>Expected precision:</b> {escape(expected_line(grouped.expected))}.</p>",
    ]
    if grouped.failed:
        failed = "".join(f"<li>{escape(f)}</li>" for f in grouped.failed)
        parts.append(f"<p>Photos not read:</p><ul>{failed}</ul>")
    for number, rows in enumerate(groups, 1):
        figures = "".join(_figure(grouped, r, thumbs[r]) for r in rows)
        parts.append(f'<section><h2>Group {number} ({len(rows)} faces)</h2>'
                     f'<div class="faces">{figures}</div></section>')  # fmt: skip
    messy = grouped.grouping.messy
    figures = "".join(_figure(grouped, r, thumbs[r]) for r in messy)
    parts.append(f'<section><h2>In no group ({len(messy)} faces)</h2>'
                 f'<div class="faces">{figures}</div></section></body></html>')  # fmt: skip
    return "\n".join(parts)


def write(dest: Path, grouped: GroupedFaces) -> None:
    """The page for ``grouped`` at ``dest``, owner-only, renamed into place."""
    write_private(dest, render(grouped).encode("utf-8"))
