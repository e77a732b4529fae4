"""Writing training renders as a Hugging Face imagefolder dataset.

Layout of `out_dir`::

    world.json          generator settings (seed, size, number of captions) and the held-out rule
    metadata.jsonl      one line per image: file_name, text, captions (paraphrases, text first),
                        scene (the structured scene as a JSON string)
    0000000.png ...

Image `i` depends only on (seed, i), so writing is resumable: existing images with a metadata line are kept
and the rest are added; a partly written last line is dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from meissonic.world.captions import captions
from meissonic.world.render import render
from meissonic.world.scene import HELDOUT_ARRANGEMENTS, HELDOUT_COUNTS, HELDOUT_PAIRS, Scene, training_scene


def training_example(index: int, seed: int = 0, num_captions: int = 4) -> tuple[Scene, list[str]]:
    """Scene `index` of the training stream of `seed` and its paraphrased captions."""
    rng = np.random.default_rng([seed, index])
    scene = training_scene(rng)
    return scene, captions(scene, rng, num_captions)


def _settings(seed: int, size: int, num_captions: int) -> dict:
    return {
        "generator": "meissonic.world",
        "seed": seed,
        "size": size,
        "num_captions": num_captions,
        "heldout": {
            "pairs": sorted(" ".join(p) for p in HELDOUT_PAIRS),
            "counts": sorted(f"{n} {k}" for n, k in HELDOUT_COUNTS),
            "arrangements": sorted(" ".join(a) for a in HELDOUT_ARRANGEMENTS),
        },
    }


def _read_metadata(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
            rows[row["file_name"]] = row
    return rows


def write_dataset(
    out_dir: str | os.PathLike, num: int, seed: int = 0, size: int = 256, num_captions: int = 4, progress=None
) -> Path:
    """Write `num` training renders (no held-out composition) to `out_dir`, resuming a previous run.

    `progress`, if given, is called as progress(done, num) after each image. Returns the metadata path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(seed, size, num_captions)
    info_path = out / "world.json"
    if info_path.is_file():
        previous = json.loads(info_path.read_text())
        if {k: previous.get(k) for k in ("seed", "size", "num_captions")} != {
            k: settings[k] for k in ("seed", "size", "num_captions")
        }:
            raise ValueError(f"{out} holds a dataset with other settings ({previous}); use another folder")
    info_path.write_text(json.dumps(settings, indent=2) + "\n")
    meta_path = out / "metadata.jsonl"
    rows = {name: row for name, row in _read_metadata(meta_path).items() if (out / name).is_file()}
    with meta_path.open("w") as f:  # rewrite the kept rows (drops broken lines and rows without an image)
        for row in rows.values():
            f.write(json.dumps(row) + "\n")
    with meta_path.open("a") as f:
        for i in range(num):
            name = f"{i:07d}.png"
            if name not in rows:
                scene, texts = training_example(i, seed, num_captions)
                render(scene, size).save(out / name, optimize=False)
                row = {"file_name": name, "text": texts[0], "captions": texts, "scene": scene.to_json()}
                f.write(json.dumps(row) + "\n")
                f.flush()
            if progress is not None:
                progress(i + 1, num)
    return meta_path
