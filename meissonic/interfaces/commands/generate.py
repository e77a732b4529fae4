"""`meissonic generate PROMPT`: text to image."""

from __future__ import annotations

import argparse

from .common import (
    add_model_arguments,
    add_output_arguments,
    add_sampling_arguments,
    generators,
    load_pipeline,
    output_paths,
    sampling_kwargs,
    save_png,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="+", help="one or more prompts (quote each)")
    add_model_arguments(parser)
    add_sampling_arguments(parser, steps=None, guidance=None)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ...pipelines import MeissonicPipeline

    count = len(args.prompt) * args.num_images
    paths = output_paths(args.output, count, args.overwrite)  # fail before loading anything
    pipe = load_pipeline(args, MeissonicPipeline)
    images = pipe(args.prompt, num_images_per_prompt=args.num_images, generator=generators(args.seed, count),
                  **sampling_kwargs(args)).images
    for image, path in zip(images, paths, strict=True):
        save_png(image, path)
        print(path)
    return 0
