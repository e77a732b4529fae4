"""Benchmark one transformer step: seconds, TFLOP/s against this machine's matmul rate, peak memory.

Examples (from the repo root):
    python bench/bench_transformer.py --config all --dtype bf16 --repeats 3
    python bench/bench_transformer.py --config 1024 --profile
    python bench/bench_transformer.py --train

Every figure comes from the same run: the dense matmul rate is measured first on shapes taken from the
model (e.g. (2202 x 1024) @ (1024 x 4096)), and the step's achieved FLOP/s is reported as a fraction of it.
FLOPs are counted analytically (`count_flops`; only matmuls, convolutions and attention, as
torch.utils.flop_counter does). Models get random weights and are built directly in the benchmark dtype.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meissonic.models import MeissonicTransformer2DModel  # noqa: E402

REFERENCE_CONFIGS = REPO.parent / "shared" / "reference" / "configs.json"
# transformer/config.json of the released 1024 px checkpoint, used when the shared reference folder is absent.
RELEASED_1024 = dict(
    attention_head_dim=128, axes_dims_rope=[16, 56, 56], codebook_size=8192, downsample=True,
    guidance_embeds=False, in_channels=64, joint_attention_dim=1024, num_attention_heads=8, num_layers=14,
    num_single_layers=28, patch_size=1, pooled_projection_dim=1024, upsample=True, vocab_size=8256,
)
# The tiny model of tests/test_transformer.py.
TINY = dict(
    num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
    pooled_projection_dim=32, axes_dims_rope=[4, 6, 6], vocab_size=40, codebook_size=32, downsample=True,
    upsample=True,
)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TEXT_LEN = 77
BATCH = 2  # one classifier-free-guidance step: [uncond, cond]


@dataclass
class Case:
    """A model config and the input size of one step."""

    name: str
    config: dict
    grid: int  # token grid side (image side / 16)
    batch: int = BATCH
    text_len: int = TEXT_LEN


def released_config() -> dict:
    if REFERENCE_CONFIGS.is_file():
        config = json.loads(REFERENCE_CONFIGS.read_text())["meissonic_1024"]["transformer/config.json"]
        return {k: v for k, v in config.items() if not k.startswith("_")}
    return dict(RELEASED_1024)


def cases() -> dict[str, Case]:
    released = released_config()
    return {
        "tiny": Case("tiny", dict(TINY), grid=8),
        "512": Case("512", {**released, "downsample": False, "upsample": False}, grid=32),
        "1024": Case("1024", released, grid=64),
    }


# ----------------------------------------------------------------------------------------------- FLOPs


def count_flops(config: dict, batch: int, height: int, width: int, text_len: int) -> int:
    """FLOPs (2 per multiply-add) of the matmuls, convolutions and attention products of one forward."""

    def linear(rows: int, fan_in: int, fan_out: int) -> int:
        return 2 * rows * fan_in * fan_out

    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    dim = heads * head_dim
    pooled, joint = config["pooled_projection_dim"], config["joint_attention_dim"]
    stride = 2 if config["downsample"] else 1
    pixels = batch * height * width  # token-grid positions
    image = batch * (height // stride) * (width // stride)  # image tokens in the blocks
    text = batch * text_len
    seq = text_len + (height // stride) * (width // stride)
    attention = 4 * batch * seq * seq * dim  # q k^T and (softmax) v

    flops = linear(batch, pooled + 5 * 256, dim) + linear(batch, dim, dim)  # cond_embed
    flops += linear(batch, 256, dim) + linear(batch, pooled, dim) + 2 * linear(batch, dim, dim)  # temb
    flops += linear(config["vocab_size"], dim, dim)  # embed.conv (1x1), applied to the vocabulary table
    flops += linear(image, 4 * dim, dim) if config["downsample"] else 0  # conv k=2 s=2
    flops += linear(image, dim, dim) + linear(text, joint, dim)  # project_to_hidden, context_embedder
    per_stream = 4 * linear(1, dim, dim) + linear(1, dim, 4 * dim) + linear(1, 4 * dim, dim)  # per token
    dual = 2 * linear(batch, dim, 6 * dim) + (image + text) * per_stream + attention
    single = linear(batch, dim, 3 * dim) + (image + text) * (
        3 * linear(1, dim, dim) + linear(1, dim, 4 * dim) + linear(1, 5 * dim, dim)) + attention
    flops += config["num_layers"] * dual + config["num_single_layers"] * single
    flops += linear(image, dim, dim)  # project_from_hidden
    flops += linear(image, dim, 4 * dim) if config["upsample"] else 0  # transposed conv k=2 s=2
    flops += linear(pixels, dim, dim) + linear(pixels, dim, config["codebook_size"])  # mlm_layer
    return flops


# ---------------------------------------------------------------------------------------------- memory


def rss_gb(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident set size of this process; ru_maxrss where /proc is absent."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def in_fresh_process(fn: Callable[..., dict], *args: object) -> dict:
    """fn(*args) in a new process, so that its peak RSS is its own (freed memory stays in a heap)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------------------------- timing


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_rate(dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """Achieved TFLOP/s of F.linear on shapes of the 1024 model (CFG batch: 2 x 1101 tokens)."""
    rows = BATCH * (TEXT_LEN + 32 * 32)
    shapes = [(rows, 1024, 4096), (rows, 4096, 1024), (rows, 1024, 3072), (rows, 5120, 1024),
              (4096, 4096, 4096)]
    rates = {}
    with torch.inference_mode():
        for m, k, n in shapes:
            x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            seconds = min(best_time(lambda x=x, w=w: F.linear(x, w), repeats))
            rates[f"({m}x{k})@({k}x{n})"] = 2 * m * k * n / seconds / 1e12
            del x, w
    return rates


# ----------------------------------------------------------------------------------------------- model


def random_model(config: dict, dtype: torch.dtype) -> MeissonicTransformer2DModel:
    """The model with random weights, allocated once in `dtype` (no float32 copy of a 1B model)."""
    with torch.device("meta"):
        model = MeissonicTransformer2DModel.from_config(config)
    # nn.Module.to: diffusers' ModelMixin.to warns about dtype casts meant for loaded checkpoints.
    model = torch.nn.Module.to(model, dtype).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and "norm" in name:
                param.fill_(1.0)
            elif param.ndim == 1:
                param.zero_()
            else:
                fan_in = param[0].numel() if param.ndim > 1 else 1
                param.normal_(0.0, fan_in**-0.5, generator=generator)
    return model.eval()


def random_inputs(
    model: MeissonicTransformer2DModel, case: Case, dtype: torch.dtype,
) -> tuple[torch.Tensor, ...]:
    """Tokens (every other row masked), text states, pooled text, timestep, micro-conditions."""
    config, batch = model.config, case.batch
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config.codebook_size, (batch, case.grid, case.grid), generator=generator)
    tokens[:, ::2] = model.mask_token_id
    text = torch.randn(batch, case.text_len, config.joint_attention_dim, generator=generator, dtype=dtype)
    pooled = torch.randn(batch, config.pooled_projection_dim, generator=generator, dtype=dtype)
    timestep = torch.full((case.batch,), 40.0)
    side = case.grid * 16
    micro = torch.tensor([[side, side, 0, 0, 6.0]]).expand(case.batch, 5)
    return tokens, text, pooled, timestep, micro


def bench_step(case: Case, dtype: torch.dtype, repeats: int) -> dict:
    """Time `repeats` inference steps after a warm-up; run it `in_fresh_process` for a meaningful peak RSS."""
    model = random_model(case.config, dtype)
    inputs = random_inputs(model, case, dtype)
    result = dict(config=case.name, model_rss_gb=rss_gb("VmRSS"))
    with torch.inference_mode():
        logits = model(*inputs)  # warm-up
        times = best_time(partial(model, *inputs), repeats, warmup=0)
    result.update(
        finite=bool(torch.isfinite(logits).all()),
        seconds=min(times),
        median_s=statistics.median(times),
        flops=count_flops(case.config, case.batch, case.grid, case.grid, case.text_len),
        peak_rss_gb=rss_gb(),
    )
    return result


def profile_step(case: Case, dtype: torch.dtype) -> None:
    """Self CPU time of one step, split into linear/conv matmuls, attention and the rest (elementwise, norms,
    copies). Attention: SDPA, softmax, and the products with a head_dim-sized operand."""
    from torch.profiler import ProfilerActivity, profile

    model = random_model(case.config, dtype)
    inputs = random_inputs(model, case, dtype)
    with torch.inference_mode():
        model(*inputs)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(*inputs)
    head_dim = case.config["attention_head_dim"]
    totals = {"linear/conv": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages(group_by_input_shape=True):
        if any(k in event.key for k in ("scaled_dot_product", "softmax")) or (
                event.key in ("aten::mm", "aten::bmm") and any(head_dim in s for s in event.input_shapes)):
            group = "attention"
        elif any(k in event.key for k in ("addmm", "aten::mm", "linear", "conv", "matmul", "mkldnn")):
            group = "linear/conv"
        else:
            group = "other"
        totals[group] += event.self_cpu_time_total / 1e6
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    whole = sum(totals.values())
    print(f"\nprofile, config {case.name} {dtype}: {whole:.2f} s of operator self time")
    for group, seconds in totals.items():
        print(f"  {group:<12} {seconds:7.2f} s  {seconds / whole:6.1%}")
    print("  top operators (self time, calls):")
    for event in events[:15]:
        print(f"    {event.key:<48} {event.self_cpu_time_total / 1e6:7.3f} s  {event.count:6d}")


# ------------------------------------------------------------------------------------------- training


def train_step_memory(
    config: dict, case: Case, dtype: torch.dtype, checkpointing: bool, repeats: int,
) -> dict:
    """Seconds and peak RSS of training steps (forward, loss, backward); run it `in_fresh_process`."""
    model = random_model(config, dtype).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    inputs = random_inputs(model, case, dtype)
    model_rss = rss_gb("VmRSS")

    def step() -> None:
        model(*inputs).float().logsumexp(dim=1).mean().backward()
        model.zero_grad(set_to_none=True)

    times = best_time(step, repeats)
    return dict(seconds=min(times), peak_rss_gb=rss_gb(), model_rss_gb=model_rss)


def bench_train(dtype: torch.dtype, repeats: int) -> None:
    """Training step with and without gradient checkpointing: the released width with 4 dual and 8 single
    blocks at 512 px (32 x 32 tokens), batch 2."""
    config = {**released_config(), "num_layers": 4, "num_single_layers": 8, "downsample": False,
              "upsample": False}
    case = Case("mid-512", config, grid=32)
    print(f"\ntraining step, {case.name} ({config['num_layers']}+{config['num_single_layers']} blocks), "
          f"batch {case.batch}, {dtype}, best of {repeats} after a warm-up")
    print(f"  {'checkpointing':<14}{'s/step':>8}{'peak RSS GB':>13}{'model RSS GB':>14}"
          f"{'peak - model GB':>17}")
    for checkpointing in (False, True):
        r = in_fresh_process(train_step_memory, config, case, dtype, checkpointing, repeats)
        print(f"  {str(checkpointing):<14}{r['seconds']:8.2f}{r['peak_rss_gb']:13.2f}"
              f"{r['model_rss_gb']:14.2f}{r['peak_rss_gb'] - r['model_rss_gb']:17.2f}")


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "512", "1024", "all"], default="all")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per config (best, median shown)")
    parser.add_argument("--profile", action="store_true", help="also profile one step of each config")
    parser.add_argument("--train", action="store_true", help="only the training-step memory benchmark")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.train:
        bench_train(dtype, args.repeats)
        return

    # The matmul rate is measured before and after the model steps (best of both): other processes may be
    # running, and a rate measured while they do would flatter the model's fraction of it.
    rates = {name: matmul_rate(d) for name, d in DTYPES.items()}
    names = ["tiny", "512", "1024"] if args.config == "all" else [args.config]
    results = [in_fresh_process(bench_step, cases()[name], dtype, args.repeats) for name in names]
    for name, d in DTYPES.items():
        again = matmul_rate(d)
        rates[name] = {shape: max(rate, again[shape]) for shape, rate in rates[name].items()}
    for name, per_shape in rates.items():
        shapes = ", ".join(f"{s} {r * 1e3:.0f}" for s, r in per_shape.items())
        print(f"{name} matmul GFLOP/s (best of before/after): {shapes}")
    peak = max(rates[args.dtype].values())
    print(f"reference rate ({args.dtype}, best shape): {peak * 1e3:.0f} GFLOP/s\n")

    header = f"{'config':<8}{'s/step':>9}{'median':>9}{'TFLOP':>10}{'TFLOP/s':>10}{'of matmul':>11}" \
             f"{'peak RSS GB':>13}{'model RSS GB':>14}{'finite':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        achieved = r["flops"] / r["seconds"] / 1e12
        print(f"{r['config']:<8}{r['seconds']:9.3f}{r['median_s']:9.3f}{r['flops'] / 1e12:10.3g}"
              f"{achieved:10.3g}{achieved / peak:11.1%}{r['peak_rss_gb']:13.2f}{r['model_rss_gb']:14.2f}"
              f"{str(r['finite']):>8}")
    if args.profile:
        for name in names:
            profile_step(cases()[name], dtype)


if __name__ == "__main__":
    main()
