"""Rotary position embedding over 3 axes (Flux-style), with tables cached per grid size."""

from __future__ import annotations

import torch
from torch import nn


def rope_ids(text_len: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Position ids (text_len + height*width, 3) in sequence order [text; image].

    Text ids are all zero; image ids are [0, row, col] in row-major order, matching the token flattening.
    """
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1)
    text = torch.zeros(text_len, 3, dtype=image.dtype, device=device)
    return torch.cat([text, image], dim=0)


class RotaryEmbedding(nn.Module):
    """cos/sin tables (S, head_dim) for given position ids; `axes_dims` split the head dim between the 3 axes."""

    def __init__(self, axes_dims: tuple[int, ...] | list[int], theta: float = 10000.0):
        super().__init__()
        if any(d % 2 for d in axes_dims):
            raise ValueError(f"every RoPE axis needs an even number of dims, got {list(axes_dims)}")
        self.axes_dims = tuple(axes_dims)
        self.theta = theta
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (S, sum(axes_dims)) in float32, each angle repeated for its pair of dims."""
        cos, sin = [], []
        for axis, dim in enumerate(self.axes_dims):
            freqs = self.theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
            angles = ids[:, axis].to(torch.float64)[:, None] * freqs[None, :]  # (S, dim/2)
            cos.append(angles.cos().float().repeat_interleave(2, dim=-1))
            sin.append(angles.sin().float().repeat_interleave(2, dim=-1))
        return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)

    def forward(self, text_len: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for a [text; image] sequence on a height x width token grid, built once per grid."""
        key = (text_len, height, width, str(device))
        if key not in self._cache:
            self._cache[key] = self.tables(rope_ids(text_len, height, width, device))
        return self._cache[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the last dim: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), in float32.

    x: (B, heads, S, head_dim); cos, sin: (S, head_dim).
    """
    x32 = x.float()
    x0, x1 = x32.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-x1, x0], dim=-1).flatten(-2)
    return (x32 * cos + rotated * sin).to(x.dtype)
