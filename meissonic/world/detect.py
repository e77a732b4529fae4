"""An analytic detector for world images: background colour and every shape's kind, colour, position and size.

Steps: 3x3 median filter; background = nearest background-palette colour to the median border pixel;
every pixel takes the nearest colour among {background} + object palette; per colour a morphological opening
removes specks; connected components (8-neighbourhood) smaller than `min_area` of the image are dropped; each
component is classified from scale-free shape features (fill ratio of its bounding box, share of its area in
the top half, fill of the bounding-box corners). Positions and sizes are fractions of the image side;
positions are bounding-box centres, as the renderer places shapes by their bounding boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from meissonic.world.scene import BACKGROUNDS, COLOURS

_OBJECT_NAMES = tuple(COLOURS)
_OBJECT_RGB = np.array([COLOURS[c] for c in _OBJECT_NAMES], dtype=np.float32)
_BG_NAMES = tuple(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[c] for c in _BG_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Detection:
    """One detected shape. Coordinates are fractions of the image width / height."""

    kind: str
    colour: str
    cx: float
    cy: float
    width: float
    height: float
    area: float  # fraction of the image area
    features: dict[str, float] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class DetectedScene:
    """What the detector read off an image."""

    background: str
    objects: tuple[Detection, ...]


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    return arr * 255.0 if arr.max() <= 1.0 else arr


def _shifts(arr: np.ndarray, radius: int, pad_mode: str = "edge", constant: float = 0) -> np.ndarray:
    """All (2r+1)^2 shifted copies of a 2-D or 3-D array, stacked on a new first axis."""
    h, w = arr.shape[:2]
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (arr.ndim - 2)
    kwargs = {"constant_values": constant} if pad_mode == "constant" else {}
    padded = np.pad(arr, pad, mode=pad_mode, **kwargs)
    k = 2 * radius + 1
    return np.stack([padded[i : i + h, j : j + w] for i in range(k) for j in range(k)])


def median_filter(arr: np.ndarray, radius: int = 1) -> np.ndarray:
    """Per-channel median over a (2r+1)^2 window."""
    return np.median(_shifts(arr, radius), axis=0)


def binary_open(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Erosion then dilation with a square (2r+1)^2 structuring element."""
    eroded = _shifts(mask, radius, "constant", False).all(axis=0)
    return _shifts(eroded, radius, "constant", False).any(axis=0)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (labels with 0 = outside the mask, 1..n; n)."""
    h, w = mask.shape
    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    big = h * w
    labels = np.where(mask, idx, big)
    while True:
        # Minimum label over the 3x3 neighbourhood (inside the mask), then pointer jumping.
        neighbours = _shifts(labels, 1, "constant", big).min(axis=0)
        new = np.where(mask, np.minimum(labels, neighbours), big)
        flat = new.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]
        new = flat.reshape(h, w)
        if np.array_equal(new, labels):
            break
        labels = new
    roots, dense = np.unique(labels[mask], return_inverse=True)
    out = np.zeros((h, w), dtype=np.int32)
    out[mask] = dense + 1
    return out, len(roots)


def shape_features(component: np.ndarray) -> dict[str, float]:
    """Scale-free features of a boolean mask cropped to its bounding box."""
    h, w = component.shape
    area = float(component.sum())
    rows = component.sum(axis=1)
    top = float(rows[: h // 2].sum() + (rows[h // 2] / 2 if h % 2 else 0.0))
    ch, cw = max(1, round(h * 0.15)), max(1, round(w * 0.15))
    corners = [component[:ch, :cw], component[:ch, -cw:], component[-ch:, :cw], component[-ch:, -cw:]]
    return {
        "fill": area / (h * w),
        "top": top / area,
        "corners": float(np.mean([c.mean() for c in corners])),
        "aspect": w / h,
    }


def classify_shape(features: dict[str, float]) -> str:
    """circle / square / triangle / star from `shape_features`.

    Clean renders: triangle top 0.25-0.29 (others 0.43-0.51); square corners 0.85-1.0 (circle < 0.02, star 0);
    circle fill 0.76-0.81 (star 0.46-0.56). Thresholds sit near the middle of each gap.
    """
    if features["top"] < 0.36:
        return "triangle"
    if features["corners"] > 0.5 or features["fill"] > 0.88:
        return "square"
    if features["fill"] > 0.65:
        return "circle"
    return "star"


def detect(image: Image.Image | np.ndarray, min_area: float = 0.004, denoise: bool = True) -> DetectedScene:
    """Read the background and the shapes off an image (PIL or (H, W, 3) array in [0, 255] or [0, 1])."""
    arr = _as_array(image)
    h, w = arr.shape[:2]
    if denoise:
        arr = median_filter(arr, 1)
    border = max(2, h // 64)
    edge = np.concatenate(
        [
            arr[:border].reshape(-1, 3),
            arr[-border:].reshape(-1, 3),
            arr[:, :border].reshape(-1, 3),
            arr[:, -border:].reshape(-1, 3),
        ]
    )
    bg_index = int(np.argmin(((_BG_RGB - np.median(edge, axis=0)) ** 2).sum(axis=1)))
    palette = np.concatenate([_BG_RGB[bg_index : bg_index + 1], _OBJECT_RGB])
    nearest = np.argmin(((arr[:, :, None, :] - palette[None, None]) ** 2).sum(axis=-1), axis=-1)
    radius = max(1, round(h / 256))
    objects = []
    for colour_index, colour in enumerate(_OBJECT_NAMES, start=1):
        mask = nearest == colour_index
        if mask.sum() < min_area * h * w:
            continue
        mask = binary_open(mask, radius)
        labels, n = connected_components(mask)
        for label in range(1, n + 1):
            component = labels == label
            area = int(component.sum())
            if area < min_area * h * w:
                continue
            ys, xs = np.nonzero(component)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            features = shape_features(component[y0:y1, x0:x1])
            objects.append(
                Detection(
                    classify_shape(features),
                    colour,
                    (x0 + x1) / 2 / w,
                    (y0 + y1) / 2 / h,
                    (x1 - x0) / w,
                    (y1 - y0) / h,
                    area / (h * w),
                    features,
                )
            )
    objects.sort(key=lambda d: (d.cy, d.cx))
    return DetectedScene(_BG_NAMES[bg_index], tuple(objects))
