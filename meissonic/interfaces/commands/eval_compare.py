"""`meissonic eval compare`: paired comparison of sampler settings on the world benchmark.

A baseline A and one or more settings B generate the same held-out prompts with the same per-image seeds (image i:
seed + i), so every difference comes from the sampler; A is generated once for all of them. Reported for each B:
per-category scores, the win rate of B over A (a task is a win when B is correct and A is not, a loss in the reverse
case, ties count half) with a paired bootstrap 95% interval, and seconds per image; printed as a markdown table.
Under `accelerate launch` the prompts are split across the processes.

meissonic eval compare --b published --num-prompts 200 --out compare.json      # the embedded default model
meissonic eval compare --model FOLDER --a vanilla --b published --num-prompts 200 --out compare.json
meissonic eval compare --model FOLDER --b "noise_reg=2" differential=true published --save-images cmp/
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .common import add_prompt_rewrites_argument, default_model_folder, setting_overrides

CATEGORY_ORDER = ("kind", "colour", "count", "position", "background")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="Meissonic checkpoint folder (default: the embedded model)")
    parser.add_argument("--a", default="vanilla", metavar="SPEC",
                        help='baseline sampler: "vanilla", "published", "key=value,..." or a JSON file')
    parser.add_argument("--b", required=True, nargs="+", metavar="SPEC",
                        help="one or more samplers, each compared against A (same forms)")
    parser.add_argument("--a-label", help="name of A in the printed table (default: its settings)")
    parser.add_argument("--b-label", nargs="+", metavar="LABEL",
                        help="names of the B settings in the printed table, one per --b (default: their settings)")
    parser.add_argument("--num-prompts", type=int, default=200, help="held-out world prompts (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt list and of the images")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, help="guidance scale (default: the model's)")
    parser.add_argument("--size", type=int, help="image height and width (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    add_prompt_rewrites_argument(parser)
    parser.add_argument("--quantize", choices=["int8", "fp8"], help="quantize the transformer for both settings")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the interval")
    parser.add_argument("--out", default="compare_results.json", help="results JSON path")
    parser.add_argument("--save-images", metavar="DIR",
                        help="save the images (DIR/a, DIR/b1, DIR/b2, ...) and a side-by-side grid here")
    parser.add_argument("--side-by-side", type=int, default=6, help="tasks in the side-by-side grid (default 6)")


# ----- statistics -------------------------------------------------------------------------------------------------
def aggregate(records: list[dict]) -> dict:
    """Overall, per-category and per-task-type scores from per-task records ({"correct", "checks", "task_type"})."""
    categories: dict[str, list[bool]] = defaultdict(list)
    types: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        for name, ok in record["checks"].items():
            categories[name].append(ok)
        types[record["task_type"]].append(record["correct"])
    return {
        "overall": float(np.mean([r["correct"] for r in records])) if records else float("nan"),
        "categories": {c: float(np.mean(categories[c])) for c in CATEGORY_ORDER if categories[c]},
        "task_types": {t: float(np.mean(v)) for t, v in sorted(types.items())},
    }


def paired_win_rate(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Win rate of B over A on paired binary outcomes, ties split, with a percentile bootstrap 95% interval."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired outcomes must be non-empty and of equal length")
    points = np.where(b & ~a, 1.0, np.where(a & ~b, 0.0, 0.5))
    rng = np.random.default_rng(seed)
    means = points[rng.integers(0, len(points), size=(resamples, len(points)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"win_rate": float(points.mean()), "ci95": [float(low), float(high)], "wins": int((b & ~a).sum()),
            "losses": int((a & ~b).sum()), "ties": int((a == b).sum()), "n": int(len(points))}


# ----- generation -------------------------------------------------------------------------------------------------
def generate(pipe, tasks: list, indices: list[int], options, args) -> tuple[dict[int, object], float]:
    """Images of the tasks at `indices` (image i seeded with seed + i) and the wall seconds it took."""
    import torch

    images: dict[int, object] = {}
    start = time.perf_counter()
    for first in range(0, len(indices), args.batch_size):
        chunk = indices[first:first + args.batch_size]
        out = pipe([tasks[i].text for i in chunk], height=args.size, width=args.size,
                   num_inference_steps=args.steps, guidance_scale=args.guidance_scale, sampler=options,
                   generator=[torch.Generator().manual_seed(args.seed + i) for i in chunk])
        images.update(zip(chunk, out.images, strict=True))
    return images, time.perf_counter() - start


def side_by_side(rows: list[list[object]]):
    """One image: one row per setting (A first), one column per task."""
    from PIL import Image

    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * len(rows[0]), height * len(rows)), "white")
    for row, images in enumerate(rows):
        for column, image in enumerate(images):
            grid.paste(image, (column * width, row * height))
    return grid


TABLE_HEADER = ("| setting | overall | kind | colour | count | position | background | win rate vs A [95% CI] "
                "| s/image |\n|---|---|---|---|---|---|---|---|---|")


def markdown_row(label: str, setting: dict, paired: dict | None = None) -> str:
    """One table row: the setting's scores, its win rate over A (none for A itself) and seconds per image."""
    cats = " | ".join(f"{setting['scores']['categories'].get(c, float('nan')):.3f}" for c in CATEGORY_ORDER)
    win = f"{paired['win_rate']:.3f} [{paired['ci95'][0]:.3f}, {paired['ci95'][1]:.3f}]" if paired else "-"
    return f"| {label} | {setting['scores']['overall']:.3f} | {cats} | {win} | {setting['seconds_per_image']:.2f} |"


def run(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from meissonic.eval.world import score
    from meissonic.pipelines import MeissonicPipeline
    from meissonic.sampling.options import SamplerOptions
    from meissonic.world import heldout_tasks

    args.model = str(args.model or default_model_folder())
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"model folder not found: {args.model}")
    if args.num_prompts < 1 or args.batch_size < 1:
        raise ValueError("--num-prompts and --batch-size must be >= 1")
    if args.b_label and len(args.b_label) != len(args.b):
        raise ValueError(f"--b-label gives {len(args.b_label)} names for {len(args.b)} --b settings")
    keys = ["a"] + [f"b{k}" for k in range(1, len(args.b) + 1)]
    settings = dict(zip(keys, [SamplerOptions.parse(spec) for spec in [args.a, *args.b]], strict=True))
    labels = dict(zip(keys, [args.a_label, *(args.b_label or [None] * len(args.b))], strict=True))
    labels = {key: label or settings[key].describe() for key, label in labels.items()}
    tasks = heldout_tasks(args.num_prompts, args.seed)
    state = PartialState()
    pipe = MeissonicPipeline.from_pretrained(
        args.model, torch_dtype=getattr(torch, args.dtype), **setting_overrides(args)
    ).to(state.device)
    pipe.set_progress_bar_config(disable=True)
    if args.quantize:
        pipe.quantize(args.quantize)
    args.steps, args.guidance_scale = pipe.sampling_defaults(args.steps, args.guidance_scale)
    args.size = pipe.config.default_resolution if args.size is None else args.size
    pipe(tasks[0].text, height=args.size, width=args.size, num_inference_steps=1, output_type="tokens")  # warm-up

    result: dict = {"model": str(args.model), "num_prompts": len(tasks), "seed": args.seed, "steps": args.steps,
                    "guidance_scale": args.guidance_scale, "size": args.size, "dtype": args.dtype,
                    "quantize": args.quantize, "processes": state.num_processes}
    images: dict[str, dict[int, object]] = {}
    records: dict[str, list[dict]] = {}
    summaries: dict[str, dict] = {}

    result["complete"], result["comparisons"] = False, []

    def record(key: str) -> None:
        """Add `key`'s summary (and its comparison with A) to the results; replace the JSON atomically, so a cut
        run keeps every setting it finished."""
        if key == "a":
            result["a"] = summaries["a"]
        else:
            correct_a, correct_b = ([r["correct"] for r in records[k]] for k in ("a", key))
            result["comparisons"].append({
                "b": summaries[key],
                "paired": paired_win_rate(np.array(correct_a), np.array(correct_b), args.bootstrap, args.seed),
                "per_task": [{"text": t.text, "a": bool(a), "b": bool(b)}
                             for t, a, b in zip(tasks, correct_a, correct_b, strict=True)],
            })
        result["complete"] = key == keys[-1]
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(out)

    with state.split_between_processes(list(range(len(tasks)))) as mine:
        for key in keys:
            images[key], seconds = generate(pipe, tasks, mine, settings[key], args)
            local = score([images[key][i] for i in mine], [tasks[i] for i in mine])["tasks"] if mine else []
            rows = gather_object([(i, r) for i, r in zip(mine, local, strict=True)])
            timings = gather_object([(seconds, len(mine))])
            records[key] = [r for _, r in sorted(rows, key=lambda row: row[0])]
            total_seconds, total_images = sum(t for t, _ in timings), sum(n for _, n in timings)
            summaries[key] = {"label": labels[key], "sampler": settings[key].to_dict(),
                              "scores": aggregate(records[key]),
                              "seconds_per_image": total_seconds / max(total_images, 1)}
            print(f"[{state.process_index}] {key} ({labels[key]}): {len(mine)} images in {seconds:.1f} s", flush=True)
            if args.save_images:
                folder = Path(args.save_images) / key
                folder.mkdir(parents=True, exist_ok=True)
                for i, image in images[key].items():
                    image.save(folder / f"{i:05d}.png")
            if state.is_main_process:
                record(key)
    if not state.is_main_process:
        return 0

    if args.save_images and mine:
        folder, shown = Path(args.save_images), list(mine[: args.side_by_side])
        side_by_side([[images[key][i] for i in shown] for key in keys]).save(folder / "side_by_side.png")
        (folder / "side_by_side.txt").write_text(
            "rows: " + " / ".join(labels[key] for key in keys) + "\ncolumns:\n"
            + "\n".join(tasks[i].text for i in shown) + "\n")

    for key, summary in summaries.items():
        cats = " ".join(f"{c}={v:.3f}" for c, v in summary["scores"]["categories"].items())
        print(f"{key.upper()} {labels[key]}: overall={summary['scores']['overall']:.3f} {cats} "
              f"({summary['seconds_per_image']:.2f} s/image)")
    for key, comparison in zip(keys[1:], result["comparisons"], strict=True):
        paired = comparison["paired"]
        print(f"{key.upper()} over A: win rate {paired['win_rate']:.3f} (95% CI {paired['ci95'][0]:.3f}-"
              f"{paired['ci95'][1]:.3f}; {paired['wins']} wins, {paired['losses']} losses, {paired['ties']} ties "
              f"of {paired['n']})")
    print()
    print(TABLE_HEADER)
    print(markdown_row(f"{labels['a']} (A)", summaries["a"]))
    for comparison in result["comparisons"]:
        print(markdown_row(comparison["b"]["label"], comparison["b"], comparison["paired"]))
    print(f"\nresults written to {args.out}")
    return 0
