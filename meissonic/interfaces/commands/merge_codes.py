"""`meissonic merge-codes`: a trained VQ with its near-duplicate codes merged into fewer codes.

meissonic merge-codes --vqvae runs/vq/export/vqvae --data data/images --codes 32 --out runs/vq32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vqvae", required=True, help="folder of the trained VQModel")
    parser.add_argument("--data", required=True, help="images to count code usage on (any dataset format)")
    parser.add_argument("--codes", type=int, required=True, help="number of codes after merging")
    parser.add_argument("--out", required=True, help="new folder for the merged VQModel (must not exist)")
    parser.add_argument("--images", type=int, default=1000, help="images to count usage on (default 1000)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-means++ start")


def run(args: argparse.Namespace) -> int:
    import torch
    from diffusers import VQModel

    from ...data import ImageTextDataset, open_source
    from ...training.merge_codes import code_usage, merge_codes, reconstruction_psnr

    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out {out} already exists; merge-codes writes a new folder and never replaces one")
    if not (Path(args.vqvae) / "config.json").is_file():
        raise FileNotFoundError(f"--vqvae {args.vqvae} is not a VQModel folder (no config.json)")
    if args.images < 1 or args.batch_size < 1:
        raise ValueError("--images and --batch-size must be at least 1")
    vqvae = VQModel.from_pretrained(args.vqvae, torch_dtype=torch.float32).eval()
    dataset = ImageTextDataset(open_source(args.data, "auto"), args.resolution, args.seed, random_crop=False)
    count = min(args.images, len(dataset))
    check = torch.stack([dataset[i]["pixels"] for i in range(min(64, count))])  # PSNR before/after merging
    batches = (  # streamed: 1,000 renders of 256 px would take 0.8 GB as float pixels
        torch.stack([dataset[i]["pixels"] for i in range(start, min(start + args.batch_size, count))])
        for start in range(0, count, args.batch_size)
    )
    usage = code_usage(vqvae, batches)
    merged, mapping = merge_codes(vqvae, args.codes, usage, args.seed)
    report = {
        "source": str(args.vqvae),
        "images": count,
        "codes_before": len(usage),
        "codes_used_before": int((usage > 0).sum()),
        "codes_after": args.codes,
        "psnr_before": reconstruction_psnr(vqvae, check),
        "psnr_after": reconstruction_psnr(merged, check),
        "psnr_images": len(check),
        "mapping": mapping.tolist(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    merged.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "merge.json").write_text(json.dumps(report, indent=1))
    tmp.rename(out)
    print(
        f"{report['codes_used_before']} of {report['codes_before']} codes used on {count} images -> {args.codes} "
        f"codes; PSNR on {len(check)} images {report['psnr_before']:.2f} -> {report['psnr_after']:.2f} dB; "
        f"wrote {out}"
    )
    return 0
