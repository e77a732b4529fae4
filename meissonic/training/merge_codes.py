"""Merge a trained VQ's near-duplicate codes into fewer codes: usage-weighted k-means on its codebook.

A VQ trained with many codes on simple images packs them densely. The world VQ's 1,024 codes lie a median 0.07
apart at norm 2.1, so a 1-3% change in the encoder output (another object 100 px away is enough) flips about
half the tokens of a region to codes that decode alike. The decoder does not care; a transformer trained on
the tokens must learn to predict that noise. Merging the codes into a few clusters keeps the reconstruction
(each centroid is a usage-weighted mean of codes the decoder knows) and removes most of the noise.

The result is an ordinary diffusers `VQModel` with `num_vq_embeddings` = the new count: the same encoder and
decoder weights, a smaller codebook. Token ids of the old VQ map to the new ones through `mapping`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .train_vq import psnr, quantize, reconstruct


@torch.no_grad()
def code_usage(vqvae, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """How often each code is chosen for the pixels (B, 3, H, W) in [0, 1] of `batches`: (num_codes,) int64."""
    counts = torch.zeros(vqvae.config.num_vq_embeddings, dtype=torch.long)
    for pixels in batches:
        _, indices = quantize(vqvae, vqvae.encode(pixels.float()).latents.float())
        counts += torch.bincount(indices.flatten().cpu(), minlength=len(counts))
    return counts


def weighted_kmeans(
    points: torch.Tensor, weights: torch.Tensor, k: int, iterations: int = 50, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of points (N, D) with weights (N,) > 0, seeded by weighted k-means++.

    Returns the centroids (k, D), each the weighted mean of its points, and each point's cluster (N,).
    """
    if not 1 <= k <= len(points):
        raise ValueError(f"cannot make {k} clusters of {len(points)} points")
    if (weights <= 0).any():
        raise ValueError("k-means weights must be > 0")
    generator = torch.Generator().manual_seed(seed)
    points, weights = points.double(), weights.double()
    chosen = [int(torch.multinomial(weights, 1, generator=generator))]
    nearest = (points - points[chosen[0]]).pow(2).sum(1)
    for _ in range(k - 1):
        index = int(torch.multinomial(weights * nearest + 1e-30, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (points - points[index]).pow(2).sum(1))
    centroids = points[chosen].clone()
    assignment = torch.full((len(points),), -1, dtype=torch.long)
    for _ in range(iterations):
        new = torch.cdist(points, centroids).argmin(1)
        if torch.equal(new, assignment):
            break
        assignment = new
        for cluster in range(k):
            members = assignment == cluster
            if members.any():  # an emptied cluster keeps its centroid
                w = weights[members, None]
                centroids[cluster] = (points[members] * w).sum(0) / w.sum()
    return centroids.float(), assignment


def merge_codes(vqvae, num_codes: int, usage: torch.Tensor, seed: int = 0):
    """A copy of `vqvae` whose codebook is `num_codes` usage-weighted k-means centroids of the old one.

    usage: (old num_codes,) counts from `code_usage`; unused codes get a tiny weight, so they belong to a
    cluster without pulling it. Returns (new VQModel in float32, mapping (old num_codes,) old id -> new id).
    """
    from diffusers import VQModel

    codebook = vqvae.quantize.embedding.weight.detach().float().cpu()
    if usage.shape != (len(codebook),):
        raise ValueError(f"usage has shape {tuple(usage.shape)}, the codebook has {len(codebook)} codes")
    if not 1 <= num_codes < len(codebook):
        raise ValueError(f"num_codes must be in 1..{len(codebook) - 1} (fewer than the VQ's {len(codebook)})")
    weights = usage.double().clamp(min=1e-6)
    centroids, mapping = weighted_kmeans(codebook, weights, num_codes, seed=seed)
    config = {k: v for k, v in vqvae.config.items() if not k.startswith("_")}
    merged = VQModel.from_config({**config, "num_vq_embeddings": num_codes})
    state = {k: v.float() for k, v in vqvae.state_dict().items()}
    state["quantize.embedding.weight"] = centroids
    merged.load_state_dict(state, strict=True)
    return merged.eval(), mapping


@torch.no_grad()
def reconstruction_psnr(vqvae, pixels: torch.Tensor) -> float:
    """Mean PSNR (dB) of encode -> nearest code -> decode over pixels (B, 3, H, W) in [0, 1]."""
    return psnr(reconstruct(vqvae, pixels)[0], pixels.float()).mean().item()
