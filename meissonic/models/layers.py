"""Building blocks of the Meissonic transformer.

Module and parameter names follow the released checkpoints exactly (e.g. `attn.to_out.0`, `ff.net.2`,
`norm1.linear`), so a released state dict loads strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rope import inverse_rms, rms_norm_rope, rotation_tables


def sinusoid(values: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Timestep embedding (N,) -> (N, dim): [cos(v f), sin(v f)], f_k = exp(-ln(max_period) k / (dim/2))."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=values.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * inverse_rms(x32, self.eps) * self.weight.float()).to(x.dtype)


class ChannelRMSNorm(RMSNorm):
    """RMSNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters, eps 1e-6."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class MLP(nn.Module):
    """Linear -> SiLU -> Linear, as `linear_1` / `linear_2`."""

    def __init__(self, in_dim: int, dim: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim, bias=bias)
        self.linear_2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbedding(nn.Module):
    """temb = MLP(sinusoid(1000 * timestep)) + MLP(conditioning): the vector driving every adaptive norm."""

    def __init__(self, dim: int, pooled_dim: int):
        super().__init__()
        self.timestep_embedder = MLP(256, dim)
        self.text_embedder = MLP(pooled_dim, dim)

    def forward(self, timestep: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        t = sinusoid(timestep.float() * 1000, 256).to(conditioning.dtype)
        return self.timestep_embedder(t) + self.text_embedder(conditioning)


class Modulation(nn.Module):
    """Adaptive-norm parameters from temb: Linear(SiLU(temb)) split into `chunks` (B, 1, D) tensors."""

    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, chunks * dim)

    def forward(self, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(temb))[:, None, :].chunk(self.chunks, dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift."""
    return torch.addcmul(shift, layer_norm(x), 1 + scale)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation, as the released models use.

    In bfloat16 on CPU without autograd the exact (erf) GELU stands in: PyTorch's CPU tanh-GELU is ~5x slower
    there (0.54 against 0.11 ms on a 2 x 288 x 1024 tensor), and the swap is lost in bfloat16's own rounding
    (default model: a mean logit change of 0.001 in float32, against 0.040 from bfloat16 itself;
    docs/default_model.md).
    """
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled():
        return F.gelu(x)
    return F.gelu(x, approximate="tanh")


class GELUProjection(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(self.proj(x))


class FeedForward(nn.Module):
    """Linear(D, 4D) -> GELU(tanh) -> Linear(4D, D) as `net.0.proj` / `net.2`."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal softmax attention with q already scaled by 1/sqrt(head_dim): (B, S, H, d) -> (B, S, H*d)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, d)
    return F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).flatten(2)


def qk_tables(
    text_norm: RMSNorm, image_norm: RMSNorm, rope: tuple[torch.Tensor, torch.Tensor], text_len: int,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rms_norm_rope` tables for q or k: text positions' norm weight, image positions' one, RoPE, scale."""
    cos, sin = rope
    if text_norm is image_norm:
        return rotation_tables(image_norm.weight, cos, sin, scale)
    text = rotation_tables(text_norm.weight, cos[:text_len], sin[:text_len], scale)
    image = rotation_tables(image_norm.weight, cos[text_len:], sin[text_len:], scale)
    return torch.cat([text[0], image[0]]), torch.cat([text[1], image[1]])


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, rope: tuple[torch.Tensor, torch.Tensor],
    norms_q: tuple[RMSNorm, RMSNorm], norms_k: tuple[RMSNorm, RMSNorm], text_len: int = 0,
) -> torch.Tensor:
    """Attention from projections q, k, v (B, S, D): per-head q/k RMSNorm, RoPE, softmax -> (B, S, D).

    `norms_q`, `norms_k`: the (text, image) norms; the first `text_len` positions use the text ones.
    """
    q, k, v = (x.unflatten(-1, (heads, -1)) for x in (q, k, v))  # (B, S, H, d)
    scale = q.shape[-1] ** -0.5
    q = rms_norm_rope(q, *qk_tables(*norms_q, rope, text_len, scale), norms_q[1].eps)
    k = rms_norm_rope(k, *qk_tables(*norms_k, rope, text_len), norms_k[1].eps)
    return attention(q, k, v)


class JointAttention(nn.Module):
    """Attention over the sequence [text; image], each stream with its own projections and q/k norms."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.norm_added_q, self.norm_added_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_add_out = nn.Linear(dim, dim)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Every projection is called as its module, so quantized or LoRA-wrapped layers keep working.
        q, k, v = (torch.cat([text_proj(text), image_proj(image)], dim=1) for text_proj, image_proj in (
            (self.add_q_proj, self.to_q), (self.add_k_proj, self.to_k), (self.add_v_proj, self.to_v)))
        text_len = text.shape[1]
        norms_q, norms_k = (self.norm_added_q, self.norm_q), (self.norm_added_k, self.norm_k)
        out = attend(q, k, v, self.heads, rope, norms_q, norms_k, text_len)  # (B, L + N, D)
        return self.to_out[0](out[:, text_len:]), self.to_add_out(out[:, :text_len])


class SelfAttention(nn.Module):
    """Attention of the single-stream blocks: q/k/v projections and q/k norms, no output projection."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        norms_q, norms_k = (self.norm_q, self.norm_q), (self.norm_k, self.norm_k)
        return attend(self.to_q(x), self.to_k(x), self.to_v(x), self.heads, rope, norms_q, norms_k)


def clip_half(x: torch.Tensor) -> torch.Tensor:
    """fp16 activations are clipped to the finite range after each block (as in the reference)."""
    return x.clamp(-65504, 65504) if x.dtype == torch.float16 else x


class DualStreamBlock(nn.Module):
    """MM-DiT block: image and text streams with separate weights, joint attention."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = Modulation(dim, 6)
        self.norm1_context = Modulation(dim, 6)
        self.attn = JointAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.ff_context = FeedForward(dim)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, temb: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1(temb)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(temb)

        image_attn, text_attn = self.attn(modulate(image, shift, scale), modulate(text, c_shift, c_scale),
                                          rope)
        image = torch.addcmul(image, gate, image_attn)
        text = torch.addcmul(text, c_gate, text_attn)

        image = torch.addcmul(image, gate_mlp, self.ff(modulate(image, shift_mlp, scale_mlp)))
        text = torch.addcmul(text, c_gate_mlp, self.ff_context(modulate(text, c_shift_mlp, c_scale_mlp)))
        return clip_half(image), clip_half(text)


class SingleStreamBlock(nn.Module):
    """Single-stream block over [text; image]: parallel attention and MLP, one output projection."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm = Modulation(dim, 3)
        self.attn = SelfAttention(dim, heads, head_dim)
        self.proj_mlp = nn.Linear(dim, mlp_ratio * dim)
        self.proj_out = nn.Linear((mlp_ratio + 1) * dim, dim)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        shift, scale, gate = self.norm(temb)
        h = modulate(x, shift, scale)
        mlp = gelu_tanh(self.proj_mlp(h))
        x = torch.addcmul(x, gate, self.proj_out(torch.cat([self.attn(h, rope), mlp], dim=-1)))
        return clip_half(x)


class TokenEmbedding(nn.Module):
    """Token ids (B, H, W) -> Embedding -> RMSNorm -> 1x1 conv -> (B, D, H, W).

    All three act on each token alone, so they are applied to the vocabulary table (V, D) and the result is
    looked up: the same values, and V rows of work instead of B*H*W (40 against 2,048 for the default model's
    guided batch of one image).
    """

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, dim)
        self.layer_norm = RMSNorm(dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size=1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        table = self.layer_norm(self.embeddings.weight)  # (V, D)
        table = self.conv(table.T[None, :, :, None])[0, :, :, 0].T  # the 1x1 conv over a (1, D, V, 1) map
        # Looked up in float32: the backward sums every position's gradient into V rows, which bf16 would round.
        image = F.embedding(tokens, table.float()).to(table.dtype)
        return image.permute(0, 3, 1, 2)  # (B, D, H, W), channels-last in memory


class Downsample(nn.Module):
    """Feature compression: RMSNorm over channels, conv k=2 s=2: (B, D, H, W) -> (B, D, H/2, W/2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size=2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class Upsample(nn.Module):
    """Undo feature compression: RMSNorm over channels, transposed conv k=2 s=2."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim)
        self.conv = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class DownBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.downsample = Downsample(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x)


class UpBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.upsample = Upsample(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class TokenPredictionHead(nn.Module):
    """1x1 conv -> RMSNorm over channels -> 1x1 conv to codebook logits."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.layer_norm = ChannelRMSNorm(dim)
        self.conv2 = nn.Conv2d(dim, codebook_size, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.layer_norm(self.conv1(x)))
