"""`meissonic train --config FILE.yaml`: train the transformer (any stage, fine-tuning, LoRA)."""

from __future__ import annotations

import argparse

import yaml


def add_run_arguments(parser: argparse.ArgumentParser, example_config: str) -> None:
    """--config, --resume and --set, shared by `train` and `train-vq`."""
    parser.add_argument("--config", required=True, help=f"training config (YAML), e.g. {example_config}")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in run_dir from its latest checkpoint (or from CHECKPOINT)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4 (YAML value syntax)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "configs/train/tiny/stage1.yaml")
    parser.add_argument("--no-export", action="store_true", help="skip the final pipeline export")


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run(args: argparse.Namespace) -> int:
    from ...training.config import TrainConfig, load_config
    from ...training.train import Trainer

    config = load_config(args.config, TrainConfig, parse_overrides(args.set))
    trainer = Trainer(config, resume=args.resume)
    last = trainer.run(export=not args.no_export)
    trainer.close()
    if trainer.accelerator.is_main_process:
        print(
            f"trained to step {trainer.step}: loss {last.get('loss', float('nan')):.4f}, "
            f"{last.get('tokens_per_s', 0):.0f} tokens/s, skipped records {trainer.skipped}; "
            f"run folder {config.run_dir}"
        )
    return 0
