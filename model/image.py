"""Still images as ALPRO input: the reference feeds an image to the video encoder as a clip of that image
repeated over the frames (its image-text pre-training data, CC3M, "repeated to 4 frames"), after the same
resize and normalisation as video frames. Decoding takes PNG and JPEG only, with limits on the file's bytes
and on its pixels checked from the header before any pixel is decoded (a small file may claim a huge image).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import AlproConfig
from .preprocess import normalize_frames, resize_frames

FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """The bytes are not a readable PNG or JPEG image."""


class ImageTooLargeError(ImageError):
    """The image is over a byte or pixel limit (`limit`: "bytes" or "pixels")."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> torch.Tensor:
    """PNG or JPEG bytes -> uint8 (H, W, 3) RGB; ImageTooLargeError over a limit, ImageError when unreadable."""
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{len(data)} bytes is more than this server's limit of {max_bytes}", "bytes")
    if not data:
        raise ImageError("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > max_pixels:
                    raise ImageTooLargeError(f"{width}x{height} pixels is more than this server's limit of "
                                             f"{max_pixels} pixels", "pixels")
                if width < 1 or height < 1:
                    raise ImageError(f"{width}x{height} pixels")
                rgb = np.asarray(image.convert("RGB"))  # palette, grey, alpha, CMYK -> RGB
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError("not a PNG or JPEG image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # Pillow's own, lower bound
        raise ImageTooLargeError(f"the header claims more pixels than this server's limit of {max_pixels} "
                                 f"({e})", "pixels") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"unreadable image: {e}") from e
    return torch.from_numpy(rgb.copy())  # (H, W, 3)


def image_clip(image: torch.Tensor, config: AlproConfig) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (T, 3, img_size, img_size): resized, normalised, repeated over T frames."""
    frame = normalize_frames(resize_frames(image, config.img_size), config)  # (3, S, S)
    return frame.unsqueeze(0).expand(config.num_frames, -1, -1, -1).contiguous()  # (T, 3, S, S)
