"""`meissonic tiny-checkpoint FOLDER`: write a tiny random pipeline in the released layout (plumbing checks)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="where to write it (must not exist, or be empty)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ...testing import build_tiny_pipeline_folder

    folder = Path(args.folder)
    if (folder / "model_index.json").is_file():
        print(folder)  # already written: keep it (nothing a user made is replaced)
        return 0
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and is not empty")
    print(build_tiny_pipeline_folder(folder, seed=args.seed))
    return 0
