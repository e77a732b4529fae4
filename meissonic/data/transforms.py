"""Image decoding and the resize-short-side + crop transform that records SDXL-style micro-conditions."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def decode_image(data: bytes) -> Image.Image:
    """Encoded bytes -> RGB image; raises (OSError, ValueError, ...) on corrupt data."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.width < 1 or image.height < 1:
        raise ValueError("empty image")
    return image.convert("RGB")


def resize_and_crop(
    image: Image.Image, resolution: int, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Resize the short side to `resolution`, crop a square (random offsets with `rng`, centred without).

    Returns pixels (3, R, R) float32 in [0, 1] and (original width, original height, crop top, crop left),
    the crop offsets in the resized image's coordinates.
    """
    width, height = image.size
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if rng is None:
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    else:
        top = int(rng.integers(0, new_h - resolution + 1))
        left = int(rng.integers(0, new_w - resolution + 1))
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return pixels, (width, height, top, left)
