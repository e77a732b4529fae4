"""Copy a trained pipeline into the package as the embedded default model, with bfloat16 weights and its
sampling defaults (steps, guidance, sampler) and the world's layout rewrites
(`meissonic.world.captions.layout_rewrites`: "A right of B" read as "B left of A", "two A" as "an A left of an A", an
unstated background as black...) stored in model_index.json.

Usage: python scripts/package_default_model.py EXPORT_FOLDER [--vqvae FOLDER] [--steps N] [--guidance-scale G]
       [--sampler SPEC]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from diffusers import VQModel

from meissonic import MeissonicPipeline
from meissonic.world.captions import layout_rewrites

TARGET = Path(__file__).resolve().parents[1] / "meissonic" / "assets" / "default_model"
LIMIT_MB = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="pipeline folder written by `meissonic train`")
    parser.add_argument("--vqvae", help="VQ folder replacing the pipeline's (a decoder fine-tuned on the same codes)")
    parser.add_argument("--steps", type=int, help="default steps (default: the export's own)")
    parser.add_argument("--guidance-scale", type=float, help="default guidance scale (default: the export's own)")
    parser.add_argument("--sampler", help='default text-to-image sampler, e.g. "guidance_interval=0:0.5" '
                        "(default: the export's own)")
    args = parser.parse_args()
    settings = {"default_steps": args.steps, "default_guidance_scale": args.guidance_scale,
                "default_sampler": args.sampler, "prompt_rewrites": layout_rewrites()}
    pipe = MeissonicPipeline.from_pretrained(
        args.export, torch_dtype=torch.bfloat16, **{k: v for k, v in settings.items() if v is not None}
    )
    if args.vqvae:
        vqvae = VQModel.from_pretrained(args.vqvae, torch_dtype=torch.bfloat16)
        if not torch.equal(vqvae.quantize.embedding.weight, pipe.vqvae.quantize.embedding.weight):
            raise SystemExit(f"{args.vqvae} has another codebook than the VQ the transformer was trained on")
        pipe.register_modules(vqvae=vqvae)
    pipe.tokenizer.model_max_length = pipe.text_encoder.config.max_position_embeddings
    staging = TARGET.with_name(".staging-default_model")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    size_mb = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) / 2**20
    if size_mb > LIMIT_MB:
        shutil.rmtree(staging)
        raise SystemExit(f"the model takes {size_mb:.1f} MB, over the {LIMIT_MB} MB budget")
    shutil.rmtree(TARGET, ignore_errors=True)
    staging.rename(TARGET)
    print(f"{TARGET} ({size_mb:.1f} MB)")


if __name__ == "__main__":
    main()
