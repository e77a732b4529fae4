"""Tiny components built from nothing: a character-level CLIP tokenizer, a small CLIP text encoder, a small VQ
model and a small transformer config. Used by tests, benchmarks and the CPU-sized training configs."""

from __future__ import annotations

import json
import os
import string
import threading
from pathlib import Path

import torch

# Characters of the tiny tokenizer: lower-case text (CLIP lower-cases), digits and common punctuation.
_CHARS = string.ascii_lowercase + string.digits + ".,;:!?'\"-()/&+"
_MERGES = ["t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n", "e r", "r e", "o n", "a t", "e d</w>"]


def _write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: processes that share a run folder (one per rank) each write the
    tokenizer while others may be reading it, so a reader must never see a half-written file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def write_tiny_tokenizer(folder: str | Path, model_max_length: int = 77) -> Path:
    """Write vocab.json + merges.txt of a character-level CLIPTokenizer (plus a few merges) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += list(_CHARS) + [c + "</w>" for c in _CHARS]
    for merge in _MERGES:
        merged = merge.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    _write_text(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(tokens)}))
    _write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    _write_text(
        folder / "tokenizer_config.json",
        json.dumps(
            {
                "model_max_length": model_max_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    return folder


def load_tokenizer(folder: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def tiny_text_encoder(
    tokenizer,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 32,
    max_positions: int = 77,
    seed: int = 0,
    embedding_scale: float = 1.0,
    **extra,
):
    """A randomly initialised CLIPTextModelWithProjection matching `tokenizer`'s vocabulary.

    `embedding_scale` multiplies the token and position embeddings after initialisation. With one layer the
    conditioning states (the penultimate hidden states) are these embeddings, whose CLIP initialisation (std 0.02)
    leaves them so small that the transformer's text projection sees little but its own bias.
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        projection_dim=projection_dim,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config).eval()
    if embedding_scale != 1.0:
        embeddings = model.text_model.embeddings
        with torch.no_grad():
            embeddings.token_embedding.weight.mul_(embedding_scale)
            embeddings.position_embedding.weight.mul_(embedding_scale)
    return model


def tiny_vq_config(
    downsample_factor: int = 8,
    channels: int = 32,
    latent_channels: int = 8,
    codes: int = 64,
    layers_per_block: int = 1,
    **extra,
) -> dict:
    """A VQModel config with the released structure (group norm, no mid attention), scaled down."""
    blocks = downsample_factor.bit_length()  # factor 2^(blocks-1)
    if 1 << (blocks - 1) != downsample_factor:
        raise ValueError(f"downsample_factor must be a power of two, got {downsample_factor}")
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=[channels] * blocks,
        layers_per_block=layers_per_block,
        act_fn="silu",
        latent_channels=latent_channels,
        num_vq_embeddings=codes,
        norm_num_groups=min(8, channels),
        norm_type="group",
        lookup_from_codebook=True,
        mid_block_add_attention=False,
        sample_size=32,
        force_upcast=True,
    )
    config.update(extra)
    return config


def tiny_vqvae(seed: int = 0, **kwargs):
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(**tiny_vq_config(**kwargs)).eval()


def tiny_transformer_config(
    codebook_size: int = 64,
    text_dim: int = 32,
    width: int = 32,
    heads: int = 2,
    layers: int = 1,
    single_layers: int = 2,
    compression: bool = False,
    timestep_convention: str = "mask_ratio",
) -> dict:
    head_dim = width // heads
    third = head_dim // 4 // 2 * 2  # rope axes: (small, rest/2, rest/2), each even
    rest = (head_dim - third) // 2 // 2 * 2
    axes = (head_dim - 2 * rest, rest, rest)
    return dict(
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=width,
        axes_dims_rope=list(axes),
        vocab_size=codebook_size + 8,
        codebook_size=codebook_size,
        downsample=compression,
        upsample=compression,
        timestep_convention=timestep_convention,
    )
