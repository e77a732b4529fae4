"""Image conversions for the pipelines: PIL / numpy / torch <-> float tensors in [0, 1], masks, canvases."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    return [images]


def _to_pil(image: ImageInput, mode: str) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image.convert(mode)
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if isinstance(image, torch.Tensor) and array.ndim == 3 and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)  # torch images are channels-first
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"float images must hold values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
        array = np.round(array * 255).astype(np.uint8)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(f"cannot read an image of shape {tuple(image.shape)}; expected (H, W), (H, W, 3) or (3, H, W)")
    return PIL.Image.fromarray(array).convert(mode)


def image_size(image: ImageInput) -> tuple[int, int]:
    """(height, width) of one image."""
    pil = image if isinstance(image, PIL.Image.Image) else _to_pil(image, "RGB")
    return pil.height, pil.width


def images_to_tensor(images, height: int, width: int) -> torch.Tensor:
    """One or more RGB images, resized to height x width -> (B, 3, H, W) float32 in [0, 1]."""
    arrays = []
    for image in _as_list(images):
        pil = _to_pil(image, "RGB")
        if pil.size != (width, height):
            pil = pil.resize((width, height), PIL.Image.Resampling.LANCZOS)
        arrays.append(np.asarray(pil, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def masks_to_grid(masks, grid_height: int, grid_width: int) -> torch.Tensor:
    """Masks (white = regenerate) -> boolean token-grid masks (B, h, w): area-average to the grid, threshold 0.5."""
    grids = []
    for mask in _as_list(masks):
        pil = _to_pil(mask, "L").resize((grid_width, grid_height), PIL.Image.Resampling.BOX)
        grids.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0) >= 0.5)
    return torch.stack(grids)


def tensor_to_numpy(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) float32 numpy."""
    return images.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray(np.round(image * 255).astype(np.uint8)) for image in images]


def outpaint_canvas(
    image: ImageInput, left: int, right: int, top: int, bottom: int, fill: tuple[int, int, int] = (127, 127, 127)
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """Place `image` on a larger canvas extended by the given pixels on each side.

    Returns (canvas, mask) where the mask is white on the new area (to generate) and black on the original.
    """
    if min(left, right, top, bottom) < 0:
        raise ValueError("outpainting extents must be >= 0 pixels")
    if left + right + top + bottom == 0:
        raise ValueError("outpainting needs at least one side extended by a positive number of pixels")
    pil = _to_pil(image, "RGB")
    canvas = PIL.Image.new("RGB", (pil.width + left + right, pil.height + top + bottom), fill)
    canvas.paste(pil, (left, top))
    mask = PIL.Image.new("L", canvas.size, 255)
    mask.paste(0, (left, top, left + pil.width, top + pil.height))
    return canvas, mask
