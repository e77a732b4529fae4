"""`meissonic eval world`: generate images for world prompts with a model and score them.

meissonic eval world --num-prompts 64 --seed 0 --out results.json               # the embedded default model
meissonic eval world --model FOLDER --num-prompts 64 --seed 0 --out results.json
meissonic eval world --images DIR --out results.json       # re-score images saved with --save-images
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from .common import (
    add_enhance_arguments,
    add_prompt_rewrites_argument,
    add_temperature_argument,
    apply_model_options,
    default_model_folder,
    sampler_options,
    setting_overrides,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=["world"], help="benchmark to run")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="Meissonic checkpoint folder to generate with (default: the embedded model)")
    source.add_argument("--images", help="folder written by --save-images (tasks.jsonl + images) to re-score")
    parser.add_argument(
        "--split",
        choices=["heldout", "train"],
        default="heldout",
        help="held-out compositions (default) or the training distribution",
    )
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt list and of generation")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, help="guidance scale (default: the model's)")
    parser.add_argument("--size", type=int, help="image height and width (default: the model's)")
    add_temperature_argument(parser)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    add_prompt_rewrites_argument(parser)
    parser.add_argument("--out", default="world_results.json", help="results JSON path")
    parser.add_argument("--save-images", help="folder to save the generated images and their tasks into")
    parser.add_argument(
        "--candidates",
        type=int,
        default=1,
        help="images per prompt (K): also report pass@K, the share of prompts with at least one correct image; "
        "the main scores are those of the first image, generated as without this flag",
    )
    parser.add_argument(
        "--vq-images",
        type=int,
        default=8,
        help="renders of the tasks to measure VQ reconstruction PSNR on (0: skip)",
    )
    parser.add_argument("--clip-model", help="local CLIP model folder: also report CLIP score")
    parser.add_argument(
        "--hps-model", help="local CLIP-architecture preference model folder: also report HPS-style reward"
    )
    add_enhance_arguments(parser)


def _generate(pipe, tasks, args, sampler, candidate: int = 0) -> list[Image.Image]:
    """One image per task; task i's image of candidate j is seeded with seed + j * len(tasks) + i."""
    import torch

    first_seed = args.seed + candidate * len(tasks)
    images: list[Image.Image] = []
    for start in range(0, len(tasks), args.batch_size):
        batch = tasks[start : start + args.batch_size]
        out = pipe(
            prompt=[t.text for t in batch],
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=[torch.Generator().manual_seed(first_seed + i) for i in range(start, start + len(batch))],
            output_type="pil",
            sampler=sampler,
            temperature=tuple(args.temperature),
        )
        images.extend(out.images)
        of = f" (candidate {candidate + 1}/{args.candidates})" if args.candidates > 1 else ""
        print(f"generated {len(images)}/{len(tasks)}{of}", flush=True)
    return images


def _load_saved(folder: Path):
    from meissonic.world import Task

    rows = [json.loads(line) for line in (folder / "tasks.jsonl").read_text().splitlines() if line.strip()]
    tasks = [Task.from_dict(row["task"]) for row in rows]
    images = [Image.open(folder / row["file_name"]).convert("RGB") for row in rows]
    return tasks, images


def _save(folder: Path, tasks, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "tasks.jsonl").open("w") as f:
        for i, (task, image) in enumerate(zip(tasks, images, strict=True)):
            name = f"{i:05d}.png"
            image.save(folder / name)
            f.write(json.dumps({"file_name": name, "task": task.to_dict()}) + "\n")


def run(args: argparse.Namespace) -> int:
    from meissonic.eval.world import pass_at_k, score
    from meissonic.world import heldout_tasks, render, training_tasks

    for flag, value in (("--candidates", args.candidates), ("--num-prompts", args.num_prompts),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.vq_images < 0:
        raise ValueError(f"--vq-images must be >= 0, got {args.vq_images}")
    if args.images and args.candidates > 1:
        raise ValueError("--candidates needs --model: saved images hold one image per prompt")
    pipe = None
    candidates: list = []
    if args.images:
        tasks, images = _load_saved(Path(args.images))
    else:
        import torch

        from meissonic.pipelines import MeissonicPipeline

        args.model = str(args.model or default_model_folder())
        if not Path(args.model).is_dir():
            raise FileNotFoundError(f"model folder not found: {args.model}")
        make = heldout_tasks if args.split == "heldout" else training_tasks
        tasks = make(args.num_prompts, args.seed)
        pipe = MeissonicPipeline.from_pretrained(args.model, torch_dtype=getattr(torch, args.dtype),
                                                 **setting_overrides(args))
        args.steps, args.guidance_scale = pipe.sampling_defaults(args.steps, args.guidance_scale)
        args.size = pipe.config.default_resolution if args.size is None else args.size
        sampler = sampler_options(args, pipe.default_sampler_options)
        apply_model_options(pipe, args)
        pipe.set_progress_bar_config(disable=True)
        images = _generate(pipe, tasks, args, sampler)
        if args.save_images:
            _save(Path(args.save_images), tasks, images)
        candidates = [_generate(pipe, tasks, args, sampler, j) for j in range(1, args.candidates)]

    results = score(images, tasks, chance_shifts=4)
    if candidates:
        results["pass_at_k"] = pass_at_k([results] + [score(more, tasks) for more in candidates])
    results["split"] = args.split
    results["settings"] = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "func"}
    if pipe is not None:
        results["settings"]["sampler_options"] = sampler.to_dict()
    vq = getattr(pipe, "vqvae", None)
    if vq is not None and args.vq_images > 0:
        from meissonic.eval.metrics import reconstruction_psnr

        shown = [t for t in tasks[: args.vq_images] if t.scene is not None]
        reconstructions: list = []
        results["vq_reconstruction"] = reconstruction_psnr(
            vq, [render(t.scene, args.size) for t in shown], reconstructions=reconstructions
        )
        # The detector on VQ reconstructions of perfect renders: the best score any transformer can reach on this VQ.
        ceiling = score(reconstructions, shown)
        results["vq_reconstruction"]["world_overall"] = ceiling["overall"]
        results["vq_reconstruction"]["world_categories"] = ceiling["categories"]
    for name, folder in (("clip", args.clip_model), ("hps", args.hps_model)):
        if folder:
            from meissonic.eval.scorers import load_scorer

            values = load_scorer(name, folder)(images, [t.text for t in tasks])
            results[f"{name}_score"] = float(values.mean())

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    cats = " ".join(f"{k}={v:.3f}" for k, v in results["categories"].items())
    print(f"world {args.split}: overall={results['overall']:.3f} {cats} ({results['num_tasks']} tasks)")
    if "chance" in results:
        chance = " ".join(f"{k}={v:.3f}" for k, v in results["chance"]["categories"].items())
        print(f"chance (each image against {results['chance']['shifts']} other prompts): "
              f"overall={results['chance']['overall']:.3f} {chance}")
    if "pass_at_k" in results:
        passed = results["pass_at_k"]
        types = " ".join(f"{k}={v:.3f}" for k, v in passed["task_types"].items())
        print(f"pass@{passed['k']} (some image of {passed['k']} correct): overall={passed['overall']:.3f} {types}; "
              f"one image: {passed['mean_single']:.3f} on average")
    if "vq_reconstruction" in results:
        vq_result = results["vq_reconstruction"]
        print(f"VQ reconstruction of {vq_result['num_images']} renders: PSNR {vq_result['psnr']:.2f} dB, world score "
              f"{vq_result['world_overall']:.3f} (the ceiling for generated images with this VQ)")
    print(f"results written to {args.out}")
    return 0
