"""`meissonic train-vq --config FILE.yaml`: train or fine-tune the VQ image tokenizer."""

from __future__ import annotations

import argparse

from .train import add_run_arguments, parse_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "configs/vq/tiny.yaml")


def run(args: argparse.Namespace) -> int:
    from ...training.config import VQTrainConfig, load_config
    from ...training.train_vq import VQTrainer

    config = load_config(args.config, VQTrainConfig, parse_overrides(args.set))
    trainer = VQTrainer(config, resume=args.resume)
    metrics = trainer.run()
    trainer.close()
    if trainer.accelerator.is_main_process:
        print(
            "held-out: "
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            + f"; VQ model in {trainer.export_dir}"
        )
    return 0
