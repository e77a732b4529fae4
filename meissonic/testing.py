"""Tiny random checkpoints in the released folder layout, for tests, demos and benchmarks of the plumbing.

They contain no knowledge (random weights); they exercise every file, class name and code path that a released
Meissonic checkpoint does, at a size that runs in milliseconds.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from .models.transformer import MeissonicTransformer2DModel

RELEASED_MODEL_INDEX = {
    "_class_name": "Pipeline",
    "_diffusers_version": "0.30.2",
    "scheduler": ["scheduler", "Scheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "transformer": ["transformer", "Transformer2DModel"],
    "vqvae": ["diffusers", "VQModel"],
}


def write_character_tokenizer(folder: Path) -> dict[str, int]:
    """A CLIPTokenizer vocabulary of single characters (no merges): every lowercase prompt is representable."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + string.punctuation:
        for token in (char, char + "</w>"):
            vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def tiny_transformer_config(codebook_size: int = 64, text_dim: int = 32, downsample: bool = True) -> dict:
    return dict(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                joint_attention_dim=text_dim, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
                vocab_size=codebook_size + 8, codebook_size=codebook_size, downsample=downsample, upsample=downsample)


def build_tiny_pipeline_folder(
    folder: str | Path, seed: int = 0, downsample: bool = True, released_names: bool = True
) -> Path:
    """Write a random tiny pipeline (VQ scale 4, so the pixel stride is 8 with feature compression, 4 without).

    With `released_names`, model_index.json and transformer/config.json name the reference's custom classes.
    """
    from diffusers import VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    vocab = write_character_tokenizer(folder / "tokenizer")
    text_config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    CLIPTextModelWithProjection(text_config).save_pretrained(folder / "text_encoder")
    vq = VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
        latent_channels=8, num_vq_embeddings=64, norm_num_groups=4, lookup_from_codebook=True,
        mid_block_add_attention=False,
    )
    vq.save_pretrained(folder / "vqvae")
    transformer = MeissonicTransformer2DModel(**tiny_transformer_config(64, 32, downsample))
    transformer.save_pretrained(folder / "transformer")
    (folder / "scheduler").mkdir(exist_ok=True)
    scheduler = {"_class_name": "Scheduler", "mask_token_id": transformer.mask_token_id, "masking_schedule": "cosine"}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = dict(RELEASED_MODEL_INDEX) if released_names else {}
    if released_names:
        config_path = folder / "transformer" / "config.json"
        config = json.loads(config_path.read_text())
        config["_class_name"] = "Transformer2DModel"
        config.pop("timestep_convention", None)  # released configs do not carry it
        config_path.write_text(json.dumps(config, indent=2))
    else:
        index = {**RELEASED_MODEL_INDEX, "_class_name": "MeissonicPipeline",
                 "transformer": ["meissonic", "MeissonicTransformer2DModel"],
                 "scheduler": ["meissonic", "MeissonicScheduler"]}
    index["default_resolution"] = 32
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
