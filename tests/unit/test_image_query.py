"""Images as ALPRO input (model/image.py): PNG and JPEG only, limits checked from the header, a still clip of
the image repeated over the frames after the video frames' resize and normalisation."""

from __future__ import annotations

import io
import zlib

import pytest
import torch
from PIL import Image

from model import create_model, normalize_frames, resize_frames
from model.image import ImageError, ImageTooLargeError, decode_image, image_clip


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK"])
def test_any_colour_mode_becomes_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = Image.new("RGB", (7, 5), (200, 10, 10)).convert(mode)
    pixels = decode_image(_encode(image, fmt), max_bytes=10**6, max_pixels=10**6)
    assert pixels.shape == (5, 7, 3) and pixels.dtype == torch.uint8
    expected = torch.tensor(list(image.convert("RGB").getpixel((3, 2))), dtype=torch.uint8)
    assert torch.equal(pixels[2, 3], expected)


def test_other_formats_and_garbage_are_refused():
    for data in (_encode(Image.new("RGB", (4, 4)), "GIF"), _encode(Image.new("RGB", (4, 4)), "BMP"), b"\x89PNG",
                 b"", b"hello"):
        with pytest.raises(ImageError) as e:
            decode_image(data, max_bytes=10**6, max_pixels=10**6)
        assert not isinstance(e.value, ImageTooLargeError)


def test_limits_are_checked_before_decoding():
    png = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(png, max_bytes=len(png) - 1, max_pixels=10**6)
    assert e.value.limit == "bytes"
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(png, max_bytes=10**6, max_pixels=100 * 100 - 1)
    assert e.value.limit == "pixels" and "100x100" in str(e.value)


def test_a_header_claiming_a_huge_image_is_refused_from_the_header():
    # a valid PNG header for 100000 x 100000 pixels with almost no data: refused without decoding 30 GB
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = (100_000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(ImageTooLargeError):
        decode_image(png, max_bytes=10**6, max_pixels=40_000_000)


def test_an_image_clip_is_the_frame_repeated_as_video_frames_are_prepared():
    model = create_model("tiny")
    config = model.config
    pixels = torch.randint(0, 256, (30, 50, 3), dtype=torch.uint8)
    clip = image_clip(pixels, config)
    assert clip.shape == (config.num_frames, 3, config.img_size, config.img_size)
    frame = normalize_frames(resize_frames(pixels, config.img_size), config)
    for t in range(config.num_frames):
        assert torch.equal(clip[t], frame)
