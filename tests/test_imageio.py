"""imageio: every format and mode becomes RGB uint8; every bad input gets its typed error."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from visage.errors import ExtremeAspect, ImageTooLarge, InvalidImage
from visage.imageio import MAX_ASPECT, decode, load_image, media_type, shrink


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.dstack([x, y, 255 - x]))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_formats_decode_to_rgb(fmt: str) -> None:
    arr = decode(encode(gradient(), fmt))
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless
        assert np.array_equal(arr, np.asarray(gradient()))



@pytest.mark.parametrize(
    ("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")]
)
def test_a_kept_photo_is_served_with_its_own_media_type(fmt: str, mime: str) -> None:
    assert media_type(encode(gradient(), fmt)) == mime
    assert media_type(b"not an image") == "application/octet-stream"

def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    arr = decode(buf.getvalue())
    assert arr[0, 0, 0] > 200 and arr[0, 0, 2] < 50


def test_exif_orientation_applied() -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    arr = decode(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert arr.shape == (40, 20, 3)
    assert arr[:5].mean() > 200 and arr[-5:].mean() < 50  # stripe now on top


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_as_pillow_transposes_it(orientation: int) -> None:
    """decode transposes in place; the pixels are those of Pillow's copying transpose."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(gradient(), "PNG", exif=exif.tobytes())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert np.array_equal(decode(data), np.asarray(expected.convert("RGB")))


@pytest.mark.parametrize(
    "mode,fmt", [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"),
                 ("CMYK", "TIFF"), ("1", "PNG")]
)
def test_modes_become_rgb(mode: str, fmt: str) -> None:
    arr = decode(encode(gradient().convert(mode), fmt))
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8


def test_transparent_becomes_white() -> None:
    im = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert decode(encode(im, "PNG")).min() == 255


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    arr = decode(encode(Image.fromarray(ramp), "PNG"))
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255 and 100 < arr[8, 0, 0] < 155


def test_path_and_bytes_agree(tmp_path: Path) -> None:
    data = encode(gradient(), "PNG")
    (tmp_path / "g.png").write_bytes(data)
    assert np.array_equal(load_image(tmp_path / "g.png"), load_image(data))


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"hello, I am a text file named .jpg\n", "not a recognised image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a recognised image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "not a recognised|truncated|corrupt"),
    ],
)
def test_invalid_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImage, match=reason):
        decode(data)


def test_truncated_jpeg_and_png() -> None:
    for fmt in ("JPEG", "PNG"):
        data = encode(gradient(256, 256), fmt)
        with pytest.raises(InvalidImage, match="truncated|corrupt|unreadable"):
            decode(data[: len(data) // 2])


def test_truncation_is_an_error_even_when_pillow_is_told_otherwise() -> None:
    """face_recognition turns Pillow's global LOAD_TRUNCATED_IMAGES on at import."""
    from PIL import ImageFile

    data = encode(gradient(256, 256), "JPEG")
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(InvalidImage, match="truncated"):
            decode(data[: len(data) // 2])
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before  # the session's, whatever it was


def test_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(InvalidImage, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(InvalidImage, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImage, match="directory"):
        load_image(tmp_path)


def test_wrong_type_is_a_programmer_error() -> None:
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of width x height black grey pixels: tiny on disk, huge decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # only the first rows; enough for the header
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding() -> None:
    data = bomb_png(50_000, 50_000)  # 2.5 gigapixels: ~7.5 GB as RGB
    assert len(data) < 10_000
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        decode(data)
    assert time.perf_counter() - start < 1.0  # refused from the header, nothing decoded
    assert info.value.pixels == 2_500_000_000 and info.value.limit == 40_000_000


def test_pixel_limit_is_configurable() -> None:
    data = encode(gradient(100, 100), "PNG")
    with pytest.raises(ImageTooLarge, match="10,000 pixels exceeds the limit of 9,999"):
        decode(data, max_pixels=9_999)
    assert decode(data, max_pixels=10_000).shape == (100, 100, 3)


def test_a_strip_is_refused_from_its_header() -> None:
    """A 1 x 39,000,000 PNG (75 KB, under the pixel limit) cost 18-24 s of detection."""
    strip = encode(Image.new("L", (39_000_000, 1)), "PNG")
    assert len(strip) < 100_000
    start = time.perf_counter()
    with pytest.raises(ExtremeAspect, match="39,000,000x1: its sides differ by more than 20 to 1"):
        decode(strip)
    assert time.perf_counter() - start < 0.5  # from the header, nothing decoded
    # A panorama at the limit still decodes, either way round.
    side = int(MAX_ASPECT) * 50
    assert decode(encode(gradient(side, 50), "PNG")).shape == (50, side, 3)
    assert decode(encode(gradient(50, side), "PNG")).shape == (side, 50, 3)


def test_shrink_bounds_the_longest_side() -> None:
    image = np.asarray(gradient(4000, 1000))
    small = shrink(image, 2048)
    assert small.shape == (512, 2048, 3) and small.dtype == np.uint8
    assert abs(float(small.mean()) - float(image.mean())) < 2.0  # the same picture, smaller
    assert shrink(image, 4000) is image
