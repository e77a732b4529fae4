"""Image fidelity metrics (PSNR, SSIM) in numpy, and the VQ reconstruction PSNR of a set of images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image


def to_float_image(image: Any) -> np.ndarray:
    """An (H, W, C) float64 array in [0, 1] from a PIL image, a numpy array or a torch tensor.

    uint8 arrays are divided by 255; float arrays are taken as [0, 1]; (C, H, W) layouts (C in 1, 3) are
    transposed; a leading batch dimension of 1 is dropped.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    if hasattr(image, "detach"):  # torch.Tensor, without importing torch
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    arr = arr.astype(np.float64) / scale
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    return arr


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (inf when identical)."""
    x, y = to_float_image(a), to_float_image(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _gaussian_blur(arr: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian filter over the first two axes, reflect padding."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    out = arr
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return out


def ssim(a: Any, b: Any, sigma: float = 1.5, radius: int = 5) -> float:
    """Structural similarity (Wang et al. 2004) for images in [0, 1]: Gaussian window (11 x 11, sigma 1.5),
    K1 = 0.01, K2 = 0.03, computed per channel and averaged over pixels and channels."""
    x, y = to_float_image(a), to_float_image(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    c1, c2 = 0.01**2, 0.03**2
    mx, my = _gaussian_blur(x, sigma, radius), _gaussian_blur(y, sigma, radius)
    vx = _gaussian_blur(x * x, sigma, radius) - mx**2
    vy = _gaussian_blur(y * y, sigma, radius) - my**2
    cov = _gaussian_blur(x * y, sigma, radius) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(np.mean(ssim_map))


def vq_reconstruct(vq: Any, pixels: Any) -> Any:
    """Encode-quantize-decode a (B, 3, H, W) tensor in [0, 1] with a diffusers `VQModel` (or any callable)."""
    if hasattr(vq, "encode") and hasattr(vq, "decode"):
        latents = vq.encode(pixels).latents
        decoded = vq.decode(latents)  # VQModel.decode quantizes unless told not to
        decoded = getattr(decoded, "sample", decoded)
    else:
        decoded = vq(pixels)
    return decoded.clamp(0, 1)


def reconstruction_psnr(
    vq: Any | Callable[[Any], Any],
    images: Sequence[Image.Image],
    batch_size: int = 4,
    reconstructions: list[Image.Image] | None = None,
) -> dict[str, float]:
    """Mean PSNR and SSIM of VQ reconstructions of `images` (pixels in [0, 1], float32, no normalisation).
    The reconstructed images are appended to `reconstructions` when a list is given."""
    import torch

    psnrs, ssims = [], []
    param = next(iter(vq.parameters()), None) if hasattr(vq, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    for start in range(0, len(images), batch_size):
        batch = [to_float_image(im) for im in images[start : start + batch_size]]
        pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device, dtype)
        with torch.no_grad():
            out = vq_reconstruct(vq, pixels).float().cpu().permute(0, 2, 3, 1).numpy()
        for original, recon in zip(batch, out, strict=True):
            psnrs.append(psnr(original, recon))
            ssims.append(ssim(original, recon))
            if reconstructions is not None:
                reconstructions.append(Image.fromarray(np.round(np.clip(recon, 0, 1) * 255).astype(np.uint8)))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "num_images": len(psnrs)}
