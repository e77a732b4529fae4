"""Copy a trained pipeline into the package as the embedded default model, with bfloat16 weights and its
sampling defaults (steps, guidance) stored in model_index.json.

Usage: python scripts/package_default_model.py EXPORT_FOLDER [STEPS GUIDANCE]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from meissonic import MeissonicPipeline

TARGET = Path(__file__).resolve().parents[1] / "meissonic" / "assets" / "default_model"
LIMIT_MB = 60


def main(source: str, steps: int, guidance: float) -> None:
    pipe = MeissonicPipeline.from_pretrained(source, torch_dtype=torch.bfloat16, default_steps=steps,
                                             default_guidance_scale=guidance)
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
    if len(sys.argv) not in (2, 4):
        raise SystemExit(__doc__)
    main(sys.argv[1], *(int(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) == 4 else (16, 4.0))
