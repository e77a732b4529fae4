"""`meissonic preencode`: encode a dataset once with the frozen VQ and text encoder into training shards."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="training config: its model and data sections are used"
    )
    parser.add_argument("--output", required=True, help="folder for the shards")
    parser.add_argument("--input", default=None, help="raw dataset (default: the config's data.path)")
    parser.add_argument(
        "--text",
        choices=["embeddings", "ids"],
        default=None,
        help="cache text embeddings (frozen encoder) or token ids (default: ids when the config "
        "trains the text encoder)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crops", type=int, default=1, help="random crops per image")
    parser.add_argument("--shard-size", type=int, default=4096, help="records per shard")
    parser.add_argument("--states-dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--limit", type=int, default=None, help="encode only the first N records")


def run(args: argparse.Namespace) -> int:
    import torch

    from ...training.components import load_text_encoder, load_tokenizer, load_vqvae
    from ...training.config import TrainConfig, load_config
    from ...training.preencode import open_raw_dataset, preencode
    from ...training.train import vq_downsample_factor

    config = load_config(args.config, TrainConfig)
    source = args.input or config.data.path
    if not source or not Path(source).exists():
        raise FileNotFoundError(f"dataset path {source!r} does not exist")
    if args.batch_size < 1 or args.crops < 1 or args.shard_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size, --crops, --shard-size and --limit must be at least 1")
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.model, Path(config.run_dir))
    text_encoder = load_text_encoder(config.model, tokenizer, config.seed).eval()
    vqvae = load_vqvae(config.model.vqvae, config.model.pretrained, config.seed).eval()
    factor = vq_downsample_factor(vqvae)
    if config.data.resolution % factor:
        raise ValueError(f"resolution {config.data.resolution} is not a multiple of the VQ factor {factor}")
    dataset = open_raw_dataset(source, config.data, config.seed)
    text = args.text or ("ids" if config.objective.train_text_encoder else "embeddings")
    index = preencode(
        dataset,
        args.output,
        vqvae,
        tokenizer,
        text_encoder,
        text,
        args.batch_size,
        args.crops,
        args.shard_size,
        torch.bfloat16 if args.states_dtype == "bf16" else torch.float32,
        limit=args.limit,
    )
    print(f"preencoded {index['count']} records ({index['skipped']} skipped) into {args.output}")
    return 0
