"""TomeMGT: token merging in the dual-stream blocks of the transformer (SPEC section 7).

Per image, each 2x2 window of the (compressed) token grid gets one random destination token; the other tokens
are sources. The `ratio * N` sources most similar (cosine, on the block's input) to their best destination are
averaged into it before attention and before the MLP, and every token reads its merged token's output back
afterwards (unmerge). Text tokens are untouched. One merge plan serves `reuse` consecutive blocks. Merged tokens
keep their destination's rotary position, so the plan is per image and attention runs image by image.

`token_merging(model, ratio)` installs this for the duration of a `with` block and restores the model exactly
afterwards; ratio 0 installs nothing, so it is vanilla bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import modulate


@dataclass
class MergePlan:
    """How one image's N tokens map onto M merged tokens.

    keep: (M,) row-major positions whose rotary ids the merged tokens use (destinations and unmerged sources);
    source: (N,) for each position, the merged token it belongs to; counts: (M,) positions per merged token.
    """

    keep: torch.Tensor
    source: torch.Tensor
    counts: torch.Tensor

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, D) -> (1, M, D): each merged token is the mean of its positions (computed in float32)."""
        summed = torch.zeros(1, len(self.keep), x.shape[-1], dtype=torch.float32, device=x.device)
        summed.index_add_(1, self.source, x.float())
        return (summed / self.counts[None, :, None]).to(x.dtype)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(1, M, D) -> (1, N, D): every position reads its merged token's value."""
        return y[:, self.source]


def destinations(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) bool: one random destination per 2x2 window (positions outside whole windows are sources)."""
    rows, cols = height // 2, width // 2
    is_dst = torch.zeros(height, width, dtype=torch.bool)
    if rows and cols:
        choice = torch.randint(4, (rows, cols), generator=generator)
        r = torch.arange(rows)[:, None] * 2 + choice // 2
        c = torch.arange(cols)[None, :] * 2 + choice % 2
        is_dst[r, c] = True
    return is_dst.flatten()


def merge_plan(x: torch.Tensor, is_dst: torch.Tensor, ratio: float) -> MergePlan:
    """Bipartite soft matching of one image's tokens x (N, D): merge the int(ratio * N) sources most similar to
    their best destination (ties broken by position)."""
    num = x.shape[0]
    device = x.device
    is_dst = is_dst.to(device)
    dst, src = is_dst.nonzero().squeeze(1), (~is_dst).nonzero().squeeze(1)
    merged = min(int(ratio * num), len(src)) if len(dst) else 0
    representative = torch.arange(num, device=device)
    if merged:
        normed = F.normalize(x.float(), dim=-1)
        best, best_dst = (normed[src] @ normed[dst].T).max(dim=-1)
        chosen = best.argsort(descending=True, stable=True)[:merged]
        representative[src[chosen]] = dst[best_dst[chosen]]
    keep_mask = torch.ones(num, dtype=torch.bool, device=device)
    if merged:
        keep_mask[src[chosen]] = False
    keep = keep_mask.nonzero().squeeze(1)
    source = torch.searchsorted(keep, representative)
    counts = torch.bincount(source, minlength=len(keep)).float()
    return MergePlan(keep, source, counts)


@dataclass
class _MergeState:
    """What the patched blocks of one `token_merging` context share: the grid of the current call and its plans."""

    ratio: float
    reuse: int
    generator: torch.Generator
    grid: tuple[int, int] = (0, 0)
    plans: list[MergePlan] = field(default_factory=list)


def _merged_block_forward(
    block: nn.Module, state: _MergeState, index: int, image: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A DualStreamBlock forward with the image stream merged around attention and the MLP, image by image."""
    if index % state.reuse == 0:
        is_dst = destinations(*state.grid, state.generator)
        state.plans = [merge_plan(item, is_dst, state.ratio) for item in image]
    text_len = text.shape[1]
    images, texts = [], []
    for b, plan in enumerate(state.plans):
        x, c, t = image[b:b + 1], text[b:b + 1], temb[b:b + 1]
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = block.norm1(t)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(t)
        rows = torch.cat([torch.arange(text_len, device=x.device), text_len + plan.keep])
        merged_rope = (rope[0][rows], rope[1][rows])
        x_attn, c_attn = block.attn(plan.merge(modulate(x, shift, scale)), modulate(c, c_shift, c_scale),
                                    merged_rope)
        x = x + gate * plan.unmerge(x_attn)
        c = c + c_gate * c_attn
        x = x + gate_mlp * plan.unmerge(block.ff(plan.merge(modulate(x, shift_mlp, scale_mlp))))
        c = c + c_gate_mlp * block.ff_context(modulate(c, c_shift_mlp, c_scale_mlp))
        images.append(x)
        texts.append(c)
    image, text = torch.cat(images), torch.cat(texts)
    if image.dtype == torch.float16:
        image, text = image.clamp(-65504, 65504), text.clamp(-65504, 65504)
    return image, text


@contextmanager
def token_merging(model: nn.Module, ratio: float = 0.25, reuse: int = 5, seed: int = 0) -> Iterator[None]:
    """Run `model`'s dual-stream blocks with TomeMGT token merging inside the `with` block.

    ratio: fraction of image tokens merged away (0 installs nothing: exactly vanilla); reuse: consecutive blocks
    sharing one merge plan; seed: seeds the destination choices (shared by the batch, so an image does not depend
    on its neighbours). The model is restored on exit, also after an exception.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"merge ratio must be in [0, 1), got {ratio}")
    if reuse < 1:
        raise ValueError(f"reuse must be >= 1, got {reuse}")
    blocks = list(getattr(model, "transformer_blocks", []))
    if ratio == 0 or not blocks:
        yield
        return
    if any("forward" in vars(block) for block in blocks):
        raise RuntimeError("token merging is already active on this model")
    state = _MergeState(ratio, reuse, torch.Generator().manual_seed(seed))
    stride = 2 if model.config.downsample else 1

    def record_grid(module, args, kwargs):
        tokens = args[0] if args else kwargs["tokens"]
        state.grid = (tokens.shape[-2] // stride, tokens.shape[-1] // stride)

    handle = model.register_forward_pre_hook(record_grid, with_kwargs=True)
    for index, block in enumerate(blocks):
        block.forward = functools.partial(_merged_block_forward, block, state, index)
    try:
        yield
    finally:
        handle.remove()
        for block in blocks:
            del block.forward
