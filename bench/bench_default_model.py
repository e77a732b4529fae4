"""Benchmark the embedded default model against the targets of its issue: one 256x256 image at the default
steps in a warm process, peak RSS, and the cold `meissonic generate` command (new process, no --model).

Eager sampling is timed first, then `pipe.compile()` in the same process (its first call per batch size compiles;
peak RSS is reported after each). Usage (from the repo root):
python bench/bench_default_model.py [--model FOLDER] [--repeats 5] [--batch-sizes 1 4] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "a red circle above a blue square"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cold_command(prompt: str, model: str | None) -> float:
    """Seconds for `meissonic generate PROMPT` in a new process (import, load, generate, write the PNG)."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        command = [sys.executable, "-m", "meissonic.interfaces.cli", "generate", prompt, "-o", f"{folder}/out.png"]
        command += ["--model", str(Path(model).resolve())] if model else []
        subprocess.run(command, check=True, cwd=REPO, capture_output=True)
        return time.perf_counter() - start


def time_calls(pipe, batch: int, steps: int, guidance: float, repeats: int) -> dict:
    """Seconds per call of `batch` images after a timed first call (which compiles when the pipeline does)."""
    import torch

    prompts = [PROMPT] * batch
    settings = {"num_inference_steps": steps, "guidance_scale": guidance}
    start = time.perf_counter()
    pipe(prompts, generator=torch.Generator().manual_seed(0), **settings)
    first = time.perf_counter() - start
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        pipe(prompts, generator=torch.Generator().manual_seed(repeat), **settings)
        times.append(time.perf_counter() - start)
    return {
        "first_call_s": round(first, 2),
        "median_call_s": round(statistics.median(times), 3),
        "best_call_s": round(min(times), 3),
        "median_per_image_s": round(statistics.median(times) / batch, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--model", help="pipeline folder (default: the embedded model)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, help="guidance scale (default: the model's)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="time eager sampling only (default: eager, then pipe.compile() in the same process)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    start = time.perf_counter()
    import torch

    from meissonic import MeissonicPipeline
    from meissonic.interfaces.commands.common import default_model_folder

    import_s = time.perf_counter() - start
    start = time.perf_counter()
    pipe = MeissonicPipeline.from_pretrained(args.model or default_model_folder(), torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start
    config = pipe.config
    steps, guidance = pipe.sampling_defaults(args.steps, args.guidance_scale)
    results: dict = {
        "torch_threads": torch.get_num_threads(),
        "steps": steps,
        "guidance_scale": guidance,
        "sampler": pipe.default_sampler_options.describe(),
        "size": config.default_resolution,
        "import_s": round(import_s, 2),
        "load_s": round(load_s, 2),
        "per_image_s": {},
        "peak_rss_mb": {},
    }
    for mode in ("eager", "compiled") if args.compile else ("eager",):
        if mode == "compiled":
            pipe.compile()
        rows = results["per_image_s"][mode] = {}
        for batch in args.batch_sizes:
            rows[batch] = time_calls(pipe, batch, steps, guidance, args.repeats)
        results["peak_rss_mb"][mode] = round(peak_rss_mb(), 1)
    results["cold_generate_command_s"] = round(cold_command(PROMPT, args.model), 2)

    print(f"default model: {config.default_resolution} px, {steps} steps, guidance {guidance}, "
          f"sampler {results['sampler']}, {results['torch_threads']} threads")
    print(f"import {import_s:.2f} s, load {load_s:.2f} s")
    for mode, rows in results["per_image_s"].items():
        for batch, row in rows.items():
            print(f"{mode} batch {batch}: median {row['median_call_s']:.3f} s/call (best {row['best_call_s']:.3f}), "
                  f"{row['median_per_image_s']:.3f} s/image (first call {row['first_call_s']:.2f} s)   "
                  "[target: batch 1 <= 1 s]")
        print(f"{mode}: peak RSS so far {results['peak_rss_mb'][mode]:.0f} MB   [target <= 1536 MB]")
    if args.compile:
        for batch in args.batch_sizes:
            eager, compiled = (results["per_image_s"][mode][batch]["median_call_s"] for mode in ("eager", "compiled"))
            print(f"batch {batch}: compiled is {eager / compiled:.2f}x faster than eager")
    print(f"cold `meissonic generate` (new process): {results['cold_generate_command_s']:.2f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
