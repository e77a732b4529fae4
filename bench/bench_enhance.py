"""Benchmark the efficiency techniques: TomeMGT speed-up and quantized weight memory.

Examples (from the repo root):
    python bench/bench_enhance.py                      # 1024 px config, random weights, one CFG-batched bf16 step
    python bench/bench_enhance.py --config tiny        # seconds-long smoke run
    python bench/bench_enhance.py --model FOLDER --steps 16 --size 256   # a real checkpoint, end to end

Random-weight mode: the released 1024 px transformer config, weights allocated once in bf16, a [uncond; cond]
batch of 2 on the 64x64 token grid (32x32 after feature compression, 1101 tokens with the text). Reported: the
step's seconds without and with token merging (best of --repeats), the int8 step, and the weight bytes of the
transformer in bf16, int8, fp8 and W4A8. End-to-end mode: a full text-to-image call per setting.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meissonic.models import MeissonicTransformer2DModel  # noqa: E402
from meissonic.models.quantize import (  # noqa: E402
    Fp8Linear,
    W4A8Linear,
    fp8_supported,
    quantize_model,
    weight_bytes,
)
from meissonic.models.tome import token_merging  # noqa: E402

CONFIGS = {
    "1024": dict(attention_head_dim=128, axes_dims_rope=[16, 56, 56], codebook_size=8192, downsample=True,
                 joint_attention_dim=1024, num_attention_heads=8, num_layers=14, num_single_layers=28,
                 pooled_projection_dim=1024, upsample=True, vocab_size=8256),
    "tiny": dict(attention_head_dim=16, axes_dims_rope=[4, 6, 6], codebook_size=64, downsample=True,
                 joint_attention_dim=32, num_attention_heads=2, num_layers=2, num_single_layers=2,
                 pooled_projection_dim=32, upsample=True, vocab_size=72),
}
GRIDS = {"1024": 64, "tiny": 16}


def random_model(config: dict, dtype: torch.dtype) -> MeissonicTransformer2DModel:
    """Random weights allocated directly in `dtype` (no float32 copy of a 1B model)."""
    with torch.device("meta"):
        model = MeissonicTransformer2DModel.from_config(config)
    model = nn.Module.to(model, dtype).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0) if "norm" in name else param.zero_()
            else:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
    return model.eval()


def step_inputs(model: MeissonicTransformer2DModel, grid: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A CFG batch of 2: tokens (every other row masked), text states, pooled, timestep, micro-conditions."""
    config = model.config
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config.codebook_size, (2, grid, grid), generator=generator)
    tokens[:, ::2] = model.mask_token_id
    text = torch.randn(2, 77, config.joint_attention_dim, generator=generator, dtype=dtype)
    pooled = torch.randn(2, config.pooled_projection_dim, generator=generator, dtype=dtype)
    micro = torch.tensor([[grid * 16, grid * 16, 0, 0, 6.0]]).expand(2, 5)
    return tokens, text, pooled, torch.full((2,), 40.0), micro


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def quantized_bytes(model: nn.Module, layer_class, **kwargs) -> int:
    """Weight bytes of `model` if every nn.Linear were `layer_class`, without replacing anything."""
    total = weight_bytes(model)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += weight_bytes(layer_class(module, **kwargs)) - weight_bytes(module)
    return total


def bench_random(config_name: str, repeats: int, ratios: list[float]) -> dict:
    dtype = torch.bfloat16
    model = random_model(CONFIGS[config_name], dtype)
    inputs = step_inputs(model, GRIDS[config_name], dtype)
    result: dict = {"config": config_name, "dtype": "bf16", "batch": 2, "grid": GRIDS[config_name],
                    "threads": torch.get_num_threads()}
    with torch.no_grad():
        reference = model(*inputs).float()
        result["step_seconds"] = {"vanilla": best_seconds(lambda: model(*inputs), repeats)}
        for ratio in ratios:
            with token_merging(model, ratio):
                seconds = best_seconds(lambda: model(*inputs), repeats)
                merged = model(*inputs).float()
            result["step_seconds"][f"tome_{ratio}"] = seconds
            result.setdefault("tome_logit_rel_error", {})[str(ratio)] = float(
                (merged - reference).norm() / reference.norm())
        bytes_bf16 = weight_bytes(model)
        memory = {"bf16": bytes_bf16}
        if fp8_supported():
            memory["fp8"] = quantized_bytes(model, Fp8Linear)
        memory["w4a8"] = quantized_bytes(model, W4A8Linear, group_size=128)
        quantize_model(model, "int8")
        memory["int8"] = weight_bytes(model)
        result["step_seconds"]["int8"] = best_seconds(lambda: model(*inputs), max(1, repeats - 1))
        quantized = model(*inputs).float()
        result["int8_logit_rel_error"] = float((quantized - reference).norm() / reference.norm())
    result["weight_gib"] = {k: v / 2**30 for k, v in memory.items()}
    result["memory_reduction"] = {k: bytes_bf16 / v for k, v in memory.items()}
    vanilla = result["step_seconds"]["vanilla"]
    result["speedup"] = {k: vanilla / v for k, v in result["step_seconds"].items()}
    return result


def bench_pipeline(folder: str, steps: int, size: int, repeats: int) -> dict:
    """End to end with a real checkpoint: one image per setting, bf16."""
    from meissonic import MeissonicPipeline

    result: dict = {"model": folder, "steps": steps, "size": size}
    for name in ("vanilla", "tome_0.25", "int8", "published"):
        pipe = MeissonicPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
        pipe.set_progress_bar_config(disable=True)
        kwargs: dict = {}
        if name == "tome_0.25":
            kwargs["tome_ratio"] = 0.25
        elif name == "int8":
            pipe.quantize("int8")
        elif name == "published":
            kwargs["sampler"] = "published"

        def call(pipe=pipe, kwargs=kwargs):
            return pipe("a red circle above a blue square", height=size, width=size, num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(0), output_type="tokens", **kwargs)

        result[name] = {"seconds": best_seconds(call, repeats),
                        "transformer_gib": weight_bytes(pipe.transformer) / 2**30}
        del pipe
        gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="1024")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5], help="TomeMGT merge ratios")
    parser.add_argument("--model", help="checkpoint folder: benchmark the pipeline end to end instead")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.model:
        result = bench_pipeline(args.model, args.steps, args.size, args.repeats)
    else:
        result = bench_random(args.config, args.repeats, args.ratios)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
