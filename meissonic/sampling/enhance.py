"""Pure functions of the enhanced-inference techniques (SPEC section 7): no state, any batch size.

Per-image randomness comes from one generator per image when a list is given, so an image never depends on its
batch neighbours.
"""

from __future__ import annotations

import functools
import math

import torch

from .scheduler import Generators, lowest_k


def guided_logits(uncond: torch.Tensor, cond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on logits (B, C, ...): u + s (c - u), with one scale or one per sample (B,)."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(cond.device).reshape(-1, *[1] * (cond.dim() - 1))
    return uncond + scale * (cond - uncond)


def normal_noise(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """N(0, 1) noise in float32; with a list of generators, row b comes from generator b alone."""
    if isinstance(generator, list):
        return torch.cat([normal_noise((1, *shape[1:]), g, device) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def kl_per_token(probs: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for each position: probs, previous (B, N, C) -> (B, N)."""
    tiny = torch.finfo(probs.dtype).tiny
    return (probs * (probs.clamp(min=tiny).log() - previous.clamp(min=tiny).log())).sum(-1)


def differential_probs(
    probs: torch.Tensor, previous: torch.Tensor, fraction: float = 0.75, floor: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differential sampling: the distributions to draw from, and which positions use the difference.

    For the round(fraction * N) positions of each image with the smallest KL(p_i || p_{i-1}) the draw uses
    normalize(max(p_i - p_{i-1}, floor)); all other positions keep p_i. probs, previous: (B, N, C).
    Returns (draw_probs (B, N, C), chosen (B, N) bool).
    """
    batch, seq_len, _ = probs.shape
    count = torch.full((batch,), round(fraction * seq_len), device=probs.device)
    chosen = lowest_k(kl_per_token(probs, previous), count)
    difference = (probs - previous).clamp(min=floor)
    difference = difference / difference.sum(-1, keepdim=True)
    return torch.where(chosen[..., None], difference, probs), chosen


def radical_inverse(indices: torch.Tensor, base: int) -> torch.Tensor:
    """The van der Corput sequence in `base` at integer `indices` (float64 in [0, 1))."""
    result = torch.zeros(indices.shape, dtype=torch.float64)
    fraction = 1.0 / base
    remaining = indices.clone()
    while bool((remaining > 0).any()):
        result += (remaining % base).double() * fraction
        remaining = remaining // base
        fraction /= base
    return result


@functools.lru_cache(maxsize=32)
def halton_order(height: int, width: int) -> torch.Tensor:
    """Row-major grid positions (height * width,) in the order a 2-D Halton sequence (bases 2 and 3) first
    visits their cells: a permutation of all positions, fixed for a grid size and independent of any logits."""
    total = height * width
    seen = torch.zeros(total, dtype=torch.bool)
    order: list[torch.Tensor] = []
    start, chunk = 0, 4 * total
    while not bool(seen.all()):
        indices = torch.arange(start, start + chunk, dtype=torch.int64)
        x, y = radical_inverse(indices, 2), radical_inverse(indices, 3)
        cells = (y * height).long().clamp(max=height - 1) * width + (x * width).long().clamp(max=width - 1)
        # first occurrence of each cell within this chunk, in sequence order, among cells not seen before
        first = torch.full((total,), chunk, dtype=torch.int64).scatter_reduce(
            0, cells, torch.arange(chunk), reduce="amin")
        new = (first < chunk) & ~seen
        if new.any():
            positions = new.nonzero().squeeze(1)
            order.append(positions[first[positions].argsort()])
            seen |= new
        start += chunk
        if start > 10_000 * total:  # cannot happen for Halton points; guards the loop
            raise RuntimeError("Halton sequence failed to cover the grid")
    return torch.cat(order)


def halton_priority(height: int, width: int, batch: int, device: torch.device) -> torch.Tensor:
    """(B, N) float: higher for positions earlier in the Halton order (the scheduler keeps those first)."""
    ranks = torch.empty(height * width, dtype=torch.float32)
    ranks[halton_order(height, width)] = torch.arange(height * width, dtype=torch.float32)
    return (-ranks).to(device).expand(batch, -1)


def zigzag_remask(
    tokens: torch.Tensor, logits: torch.Tensor, count: torch.Tensor, eligible: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """Masked Z-sampling's inversion: re-mask, per image, the `count[b]` eligible decided tokens the inversion
    prediction is MOST confident about (highest log-probability of their current value).

    tokens (B, H, W); logits (B, C, H, W) of the inversion call; count (B,); eligible (B, N) bool (decided tokens
    the call may change, e.g. not the kept part of an inpainting)."""
    batch, height, width = tokens.shape
    flat = tokens.reshape(batch, -1)
    log_probs = torch.log_softmax(logits.reshape(batch, logits.shape[1], -1).transpose(1, 2).float(), dim=-1)
    eligible = eligible & (flat != mask_id)
    current = flat.clamp(max=log_probs.shape[-1] - 1)
    confidence = log_probs.gather(-1, current[..., None]).squeeze(-1)
    scores = (-confidence).masked_fill(~eligible, math.inf)
    count = torch.minimum(count.clamp(min=0), eligible.sum(-1))
    return flat.masked_fill(lowest_k(scores, count), mask_id).view_as(tokens)
