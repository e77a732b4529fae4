"""Training throughput on this machine: image tokens/s and peak RSS per transformer config (one optimizer
step =
forward + backward + AdamW on a batch of random token grids and text states, bf16 autocast on CPU).

    python bench/bench_train.py [--steps 5] [--configs tiny-test tiny-128 tiny-256 tiny-256-compressed]
                                [--checkpointing] [--compile]

Each config runs in its own subprocess so peak memory is per config. With --compile each config also runs with
the transformer compiled in place (what `compile: true` in a training config does) and the speed-up is printed;
`first_step_s` is the first step's time, which includes the compilation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import yaml

CONFIGS = {  # name: (transformer yaml, resolution / VQ factor 16 = token side, batch)
    "tiny-test": (
        "configs/train/tiny/stage1.yaml",
        4,
        16,
        {
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 128,
            "pooled_projection_dim": 32,
            "axes_dims_rope": [4, 6, 6],
        },
    ),
    "tiny-128": ("configs/train/tiny/stage1.yaml", 8, 16, {}),
    "tiny-256": ("configs/train/tiny/stage2.yaml", 16, 16, {}),
    "tiny-256-compressed": ("configs/train/tiny/stage3.yaml", 16, 16, {}),
    "default-model": ("configs/default_model/transformer8_32t1_deep.yaml", 32, 16, {}),
    "paper-256": ("configs/train/paper/stage1.yaml", 16, 2, {}),
}


def measure(name: str, steps: int, checkpointing: bool, compiled: bool = False) -> dict:
    import torch

    from meissonic.models import MeissonicTransformer2DModel
    from meissonic.training.objective import masked_cross_entropy_sum, masked_inputs, step_noise
    from meissonic.training.optim import decay_groups

    path, side, batch, overrides = CONFIGS[name]
    settings = dict(yaml.safe_load(open(path))["model"]["transformer"], **overrides)
    model = MeissonicTransformer2DModel(**settings, timestep_convention="mask_ratio").train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    if compiled:
        model.compile()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.01), lr=1e-4)
    text_len = 77 if name.startswith("paper") else 32
    tokens = torch.randint(0, settings["codebook_size"], (batch, side, side))
    states = torch.randn(batch, text_len, settings["joint_attention_dim"])
    pooled = torch.randn(batch, settings["pooled_projection_dim"])
    micro = torch.tensor([[256.0, 256.0, 0.0, 0.0, 6.0]]).expand(batch, 5)
    times = []
    warmup = 2  # untimed steps: a compiled model may compile again on its first calls
    for step in range(steps + warmup):
        noise = step_noise(0, step, batch, side * side, 0.1)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(
                masked_inputs(tokens, noise.masks, model.mask_token_id),
                states,
                pooled,
                noise.masks.float().mean(1),
                micro,
            )
        loss = masked_cross_entropy_sum(logits, tokens, noise.masks) / noise.masks.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        elif step == 0:
            first = time.perf_counter() - start  # includes the compilation
    seconds = sum(times) / len(times)
    return {
        "config": name,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "tokens": f"{side}x{side}",
        "batch": batch,
        "s_per_step": round(seconds, 3),
        "tokens_per_s": round(batch * side * side / seconds),
        "checkpointing": checkpointing,
        "compiled": compiled,
        "first_step_s": round(first, 1),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--configs", nargs="*", default=["tiny-test", "tiny-128", "tiny-256", "tiny-256-compressed"]
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also measure each config compiled")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.checkpointing, args.compiled)))
        return
    for name in args.configs:
        results = []
        for compiled in (False, True) if args.compile else (False,):
            command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps)]
            command += ["--checkpointing"] * args.checkpointing + ["--compiled"] * compiled
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
        if len(results) == 2:
            ratio = results[0]["s_per_step"] / results[1]["s_per_step"]
            print(f"{name}: compiled is {ratio:.2f}x the eager speed", flush=True)


if __name__ == "__main__":
    main()
