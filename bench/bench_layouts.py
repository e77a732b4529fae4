"""Two CPU layout choices of the inference code, each against its alternative, interleaved in one process:
the VQ decode of one image channels-last (the pipeline's) or in the default NCHW layout, and the RoPE pair swap
as two stacked strided slices (the model's) or `flip`. Prints medians and ratios.

Usage (from the repo root): python bench/bench_layouts.py [--model FOLDER] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def compare(name: str, ours, other, repeats: int) -> None:
    ours_ms, other_ms = [], []
    for _ in range(5):  # interleaved, so that a change of the machine's speed hits both alike
        ours_ms.append(median_ms(ours, repeats))
        other_ms.append(median_ms(other, repeats))
    a, b = statistics.median(ours_ms), statistics.median(other_ms)
    print(f"{name}: {a:.3f} ms (ours) vs {b:.3f} ms; {b / a:.2f}x")


def main() -> None:
    import torch

    from meissonic import MeissonicPipeline
    from meissonic.interfaces.commands.common import default_model_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = MeissonicPipeline.from_pretrained(args.model or default_model_folder(), torch_dtype=torch.bfloat16)
    vq = pipe.vqvae
    side = pipe.config.default_resolution // pipe.vq_scale
    tokens = torch.randint(0, vq.config.num_vq_embeddings, (1, side, side), generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def decode_nchw():
        channels = vq.config.vq_embed_dim or vq.config.latent_channels
        quant = vq.quantize.get_codebook_entry(tokens.reshape(-1), (1, side, side, channels))
        return vq.decoder(vq.post_quant_conv(quant), None).float().clamp(0, 1)

    with torch.no_grad():
        compare(f"VQ decode, 1 image of {side}x{side} tokens", lambda: pipe.decode_tokens(tokens), decode_nchw,
                args.repeats)
    x = torch.randn(2, side * side // 4 + 32, 8, 32)  # (B, S, heads, head_dim) of the default model's guided call
    swap = lambda: torch.stack((x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)  # noqa: E731
    flip = lambda: x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # noqa: E731
    assert torch.equal(swap(), flip())
    compare(f"RoPE pair swap of a {tuple(x.shape)} float32 tensor", swap, flip, args.repeats * 10)


if __name__ == "__main__":
    main()
