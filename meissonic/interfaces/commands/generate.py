"""`meissonic generate PROMPT`: text to image.

meissonic generate "a red circle" -o out.png --published
meissonic generate --prompts prompts.txt --output-dir images/          # bulk: one prompt per line
accelerate launch -m meissonic.interfaces.cli generate --prompts prompts.txt --output-dir images/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    add_enhance_arguments,
    add_model_arguments,
    add_output_arguments,
    add_sampling_arguments,
    apply_model_options,
    generators,
    load_pipeline,
    output_paths,
    read_prompt_file,
    sampler_options,
    sampling_kwargs,
    save_png,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="*", help="one or more prompts (quote each)")
    parser.add_argument("--prompts", metavar="FILE", help="bulk generation: a file with one prompt per line; "
                        "images go to --output-dir and are split across `accelerate launch` processes")
    parser.add_argument("--output-dir", metavar="DIR", help="with --prompts: folder for NNNNN.png (line number)")
    parser.add_argument("--batch-size", type=int, default=1, help="with --prompts: prompts per pipeline call")
    parser.add_argument("--grid", action="store_true", help="write one labelled grid (a row per prompt, a column per "
                        "seed: --num-images seeds) instead of separate files")
    add_model_arguments(parser)
    add_sampling_arguments(parser, steps=None, guidance=None)
    add_enhance_arguments(parser)
    add_output_arguments(parser)


def bulk_paths(folder: Path, line: int, count: int) -> list[Path]:
    """Output files of prompt `line`: NNNNN.png, or NNNNN-K.png for several images per prompt."""
    if count == 1:
        return [folder / f"{line:05d}.png"]
    return [folder / f"{line:05d}-{k}.png" for k in range(count)]


def run_bulk(args: argparse.Namespace) -> int:
    """Generate every line of --prompts; with several processes each takes its share (image j of the whole list
    always uses seed + j, so the result does not depend on the number of processes)."""
    from accelerate import PartialState

    from ...pipelines import MeissonicPipeline

    if args.prompt:
        raise ValueError("pass prompts either as arguments or with --prompts FILE, not both")
    if not args.output_dir:
        raise ValueError("--prompts needs --output-dir")
    prompts = read_prompt_file(args.prompts)
    folder = Path(args.output_dir)
    count = args.num_images
    state = PartialState()
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        existing = [str(p) for i in range(len(prompts)) for p in bulk_paths(folder, i, count) if p.exists()]
        if existing and not args.overwrite:
            raise ValueError(f"{existing[0]} exists; pass --overwrite to replace it")
    state.wait_for_everyone()
    if args.device == "auto" and state.device.type != "cpu":
        args.device = str(state.device)
    pipe = load_pipeline(args, MeissonicPipeline)
    pipe.set_progress_bar_config(disable=True)
    apply_model_options(pipe, args)
    kwargs = {**sampling_kwargs(args), "sampler": sampler_options(args, pipe.default_sampler_options)}
    with state.split_between_processes(list(range(len(prompts)))) as lines:
        for start in range(0, len(lines), args.batch_size):
            chunk = lines[start:start + args.batch_size]
            gens = [g for i in chunk for g in generators(args.seed + i * count, count)]
            images = pipe([prompts[i] for i in chunk], num_images_per_prompt=count, generator=gens, **kwargs).images
            paths = [p for i in chunk for p in bulk_paths(folder, i, count)]
            for image, path in zip(images, paths, strict=True):
                save_png(image, path)
                print(path, flush=True)
    state.wait_for_everyone()
    return 0


def run(args: argparse.Namespace) -> int:
    from ...pipelines import MeissonicPipeline

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.prompts:
        return run_bulk(args)
    if not args.prompt:
        raise ValueError("give one or more prompts, or --prompts FILE")
    if args.output_dir:
        raise ValueError("--output-dir is for --prompts FILE; use -o for prompts given as arguments")
    count = len(args.prompt) * args.num_images
    paths = output_paths(args.output, 1 if args.grid else count, args.overwrite)  # fail before loading anything
    pipe = load_pipeline(args, MeissonicPipeline)
    apply_model_options(pipe, args)
    for prompt in dict.fromkeys(args.prompt):
        if (read := pipe.rewrite_prompt(prompt)) != prompt:
            print(f"the model reads {prompt!r} as {read!r} (its prompt_rewrites; --no-prompt-rewrites turns them off)",
                  file=sys.stderr)
    if args.grid:  # a column per seed: image k of every prompt uses seed + k
        gens = [g for _ in args.prompt for g in generators(args.seed, args.num_images)]
    else:  # image i of the whole list uses seed + i
        gens = generators(args.seed, count)
    images = pipe(args.prompt, num_images_per_prompt=args.num_images, generator=gens,
                  sampler=sampler_options(args, pipe.default_sampler_options), **sampling_kwargs(args)).images
    if args.grid:
        from ..grid import labelled_grid

        images = [labelled_grid(images, args.prompt, [args.seed + k for k in range(args.num_images)])]
    for image, path in zip(images, paths, strict=True):
        save_png(image, path)
        print(path)
    return 0
