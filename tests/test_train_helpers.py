"""Builders shared by the training tests: tiny image datasets, a tiny VQ folder and tiny training configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")


def shape_image(
    colour: str, shape: str, size: int = 64, offset: int = 0, background=(245, 245, 245)
) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    lo, hi = size // 4 + offset, 3 * size // 4 + offset
    fill = COLOURS[colour]
    if shape == "square":
        draw.rectangle([lo, lo, hi, hi], fill=fill)
    elif shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=fill)
    else:
        draw.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=fill)
    return image


def shape_records(count: int, size: int = 64) -> list[tuple[Image.Image, str, float]]:
    records = []
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        offset = (i // (len(COLOURS) * len(SHAPES))) % 3 * 2 - 2
        records.append((shape_image(colour, shape, size, offset), f"a {colour} {shape}", 5.0 + i % 3))
    return records


def write_imagefolder(
    folder: Path, count: int = 24, size: int = 64, sidecar: bool = False, wide: bool = False
) -> Path:
    """An imagefolder: metadata.jsonl (text, score) or sidecar .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, caption, score) in enumerate(shape_records(count, size)):
        if wide:
            image = image.resize((size * 3 // 2, size))
        name = f"img_{i:04d}.png"
        image.save(folder / name)
        if sidecar:
            (folder / name).with_suffix(".txt").write_text(caption)
        else:
            lines.append(json.dumps({"file_name": name, "text": caption, "score": score}))
    if lines:
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_tiny_vq(folder: Path, codes: int = 64, factor: int = 8) -> Path:
    from meissonic.training.tiny import tiny_vqvae

    tiny_vqvae(codes=codes, downsample_factor=factor).save_pretrained(str(folder), safe_serialization=True)
    return folder


def tiny_train_config(tmp: Path, data: Path, vq: Path, **changes) -> dict:
    config = {
        "run_dir": str(tmp / "run"),
        "seed": 0,
        "max_steps": 6,
        "batch_size": 4,
        "grad_accum": 1,
        "mixed_precision": "bf16",
        "model": {
            "tokenizer": "tiny",
            "vqvae": str(vq),
            "text_encoder": {
                "hidden_size": 32,
                "layers": 1,
                "heads": 2,
                "projection_dim": 32,
                "max_positions": 16,
            },
            "transformer": {
                "num_layers": 1,
                "num_single_layers": 1,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": 32,
                "pooled_projection_dim": 32,
                "axes_dims_rope": [4, 6, 6],
                "vocab_size": 72,
                "codebook_size": 64,
            },
        },
        "data": {"path": str(data), "resolution": 64},
        "objective": {"cfg_dropout": 0.1},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "checkpoint": {"every": 0, "keep_last": 2},
        "log": {"every": 1, "tensorboard": False, "progress": False},
    }
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def rng_images(count: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def write_preencoded(root: Path, count: int = 8) -> tuple[Path, Path, Path]:
    """A tiny image folder, a tiny VQ and the folder's preencoded shards under `root`: (data, vq, shards)."""
    from meissonic.interfaces.cli import main

    data, vq = write_imagefolder(root / "data", count=count), write_tiny_vq(root / "vq")
    raw = write_config(root / "raw.yaml", tiny_train_config(root, data, vq))
    assert main(["preencode", "--config", str(raw), "--output", str(root / "plain")]) == 0
    return data, vq, root / "plain"
