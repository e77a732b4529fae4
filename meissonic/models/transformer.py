"""MeissonicTransformer2DModel: token grid + text -> codebook logits (SPEC sections 2-3)."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .layers import (
    MLP,
    DownBlock,
    DualStreamBlock,
    RMSNorm,
    SingleStreamBlock,
    TimeTextEmbedding,
    TokenEmbedding,
    TokenPredictionHead,
    UpBlock,
    sinusoid,
)
from .rope import RotaryEmbedding

MICRO_CONDITIONS = 5  # [orig_width, orig_height, crop_top, crop_left, aesthetic_score]
MICRO_COND_DIM = 256
TIMESTEP_CONVENTIONS = ("step_index", "mask_ratio")


class MeissonicTransformer2DModel(ModelMixin, ConfigMixin):
    """The Meissonic multi-modal transformer, checkpoint-compatible with the released weights.

    Call: `model(tokens, encoder_hidden_states, pooled_projections, timestep, micro_conds)` with tokens
    (B, H, W) (mask id `vocab_size - 1`), text states (B, L, joint_attention_dim), pooled text
    (B, pooled_projection_dim), timestep (B,) and micro-conditions (B, 5); returns logits
    (B, codebook_size, H, W).

    `timestep_convention` records what callers pass as `timestep`: "step_index" (the released checkpoints'
    sampler: the countdown step index N-1..0) or "mask_ratio" (the mask ratio in [0, 1]).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DualStreamBlock", "SingleStreamBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        num_layers: int = 14,
        num_single_layers: int = 28,
        attention_head_dim: int = 128,
        num_attention_heads: int = 8,
        joint_attention_dim: int = 1024,
        pooled_projection_dim: int = 1024,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        vocab_size: int = 8256,
        codebook_size: int = 8192,
        downsample: bool = False,
        upsample: bool = False,
        timestep_convention: str = "step_index",
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        if patch_size != 1 or guidance_embeds:
            raise ValueError("only patch_size=1 and guidance_embeds=False exist in Meissonic checkpoints")
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(
                f"axes_dims_rope {list(axes_dims_rope)} must sum to attention_head_dim {attention_head_dim}")
        if pooled_projection_dim != dim:
            raise ValueError(
                f"pooled_projection_dim ({pooled_projection_dim}) must equal heads * head_dim ({dim})")
        if downsample != upsample:
            raise ValueError("downsample and upsample must be both on or both off")
        if vocab_size <= codebook_size:
            raise ValueError(
                f"vocab_size ({vocab_size}) must exceed codebook_size ({codebook_size}) to hold the mask id")
        if timestep_convention not in TIMESTEP_CONVENTIONS:
            raise ValueError(
                f"timestep_convention must be one of {TIMESTEP_CONVENTIONS}, got {timestep_convention!r}")
        # `in_channels` is part of the released config but of no weight.

        self.embed = TokenEmbedding(vocab_size, dim)
        self.cond_embed = MLP(pooled_projection_dim + MICRO_CONDITIONS * MICRO_COND_DIM, dim, bias=False)
        self.time_text_embed = TimeTextEmbedding(dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, dim)
        self.encoder_proj_layer_norm = RMSNorm(dim)
        self.down_block = DownBlock(dim) if downsample else None
        self.project_to_hidden_norm = RMSNorm(dim)
        self.project_to_hidden = nn.Linear(dim, dim, bias=False)
        self.rope = RotaryEmbedding(axes_dims_rope)
        self.transformer_blocks = nn.ModuleList(
            DualStreamBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)
        )
        self.single_transformer_blocks = nn.ModuleList(
            SingleStreamBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_single_layers)
        )
        self.project_from_hidden_norm = RMSNorm(dim)
        self.project_from_hidden = nn.Linear(dim, dim, bias=False)
        self.up_block = UpBlock(dim) if upsample else None
        self.mlm_layer = TokenPredictionHead(dim, codebook_size)
        self.gradient_checkpointing = False

    @property
    def mask_token_id(self) -> int:
        return self.config.vocab_size - 1

    @property
    def token_stride(self) -> int:
        """Token-grid sides must be multiples of this (2 with feature compression)."""
        return 2 if self.config.downsample else 1

    def _run(self, block: nn.Module, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def forward(
        self,
        tokens: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor | float,
        micro_conds: torch.Tensor,
    ) -> torch.Tensor:
        batch, height, width = tokens.shape
        if height % self.token_stride or width % self.token_stride:
            raise ValueError(
                f"token grid {height}x{width} must be a multiple of {self.token_stride} on each side")
        dtype = self.embed.embeddings.weight.dtype
        timestep = torch.as_tensor(timestep, device=tokens.device).reshape(-1).expand(batch)

        # Conditioning vector temb (B, D): pooled text + micro-conditions, plus the timestep.
        micro = sinusoid(micro_conds.reshape(-1), MICRO_COND_DIM).reshape(batch, -1)  # (B, 5*256)
        conditioning = self.cond_embed(torch.cat([pooled_projections.to(dtype), micro.to(dtype)], dim=1))
        temb = self.time_text_embed(timestep, conditioning)

        # Streams in: image (B, N, D) on the (compressed) grid h x w; text (B, L, D).
        image = self.embed(tokens)  # (B, D, H, W)
        if self.down_block is not None:
            image = self.down_block(image)  # (B, D, H/2, W/2)
        h, w = image.shape[-2:]
        image = self.project_to_hidden(self.project_to_hidden_norm(image.flatten(2).transpose(1, 2)))
        text = self.encoder_proj_layer_norm(self.context_embedder(encoder_hidden_states.to(dtype)))
        rope = self.rope(text.shape[1], h, w, tokens.device)

        for block in self.transformer_blocks:
            image, text = self._run(block, image, text, temb, rope)
        x = torch.cat([text, image], dim=1)
        for block in self.single_transformer_blocks:
            x = self._run(block, x, temb, rope)
        image = x[:, text.shape[1]:]

        # Image stream out: back to the grid, undo compression, predict codebook logits.
        image = self.project_from_hidden(self.project_from_hidden_norm(image))
        image = image.transpose(1, 2).unflatten(2, (h, w))  # (B, D, h, w)
        if self.up_block is not None:
            image = self.up_block(image)
        return self.mlm_layer(image)  # (B, codebook_size, H, W)
