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

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from meissonic.world.captions import captions
from meissonic.world.render import render
from meissonic.world.scene import (
    HELDOUT_ARRANGEMENTS,
    HELDOUT_COUNTS,
    HELDOUT_PAIRS,
    SCENE_TYPES,
    Scene,
    training_scene,
)


def training_example(
    index: int,
    seed: int = 0,
    num_captions: int = 4,
    scene_weights: dict[str, float] | None = None,
    shuffle_pairs: bool = False,
) -> tuple[Scene, list[str]]:
    """Scene `index` of the training stream of `seed` and its paraphrased captions.

    `scene_weights` (scene type -> relative weight, e.g. {"position": 2, "pair": 1}) draws the scene types in
    those proportions; types left out are never drawn. Without it the four types are equally likely.
    A pair scene's caption names the left (or top) object first; `shuffle_pairs` names them in random order, so
    that only a position scene's relation words, not the order of the names, tell where the objects are.
    """
    rng = np.random.default_rng([seed, index])
    scene_type = None
    if scene_weights is not None:
        types, weights = check_scene_weights(scene_weights)
        scene_type = types[int(rng.choice(len(types), p=weights))]
    scene = training_scene(rng, scene_type)
    if shuffle_pairs and scene.scene_type == "pair" and rng.random() < 0.5:
        scene = dataclasses.replace(scene, objects=scene.objects[::-1])
    return scene, captions(scene, rng, num_captions)


def check_scene_weights(scene_weights: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """The scene types in `SCENE_TYPES` order and their normalised weights; a clear error for bad weights."""
    unknown = sorted(set(scene_weights) - set(SCENE_TYPES))
    if unknown:
        raise ValueError(f"unknown scene type(s) {unknown}; expected some of {list(SCENE_TYPES)}")
    if any(not np.isfinite(w) or w < 0 for w in scene_weights.values()):
        raise ValueError(f"scene weights must be finite and >= 0, got {scene_weights}")
    types = [t for t in SCENE_TYPES if scene_weights.get(t, 0) > 0]
    if not types:
        raise ValueError(f"scene weights must give at least one scene type a weight > 0, got {scene_weights}")
    weights = np.array([float(scene_weights[t]) for t in types])
    return types, weights / weights.sum()


def _settings(
    seed: int, size: int, num_captions: int, scene_weights: dict[str, float] | None, shuffle_pairs: bool
) -> dict:
    return {
        "generator": "meissonic.world",
        "seed": seed,
        "size": size,
        "num_captions": num_captions,
        "scene_weights": scene_weights,
        "shuffle_pairs": shuffle_pairs,
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
    out_dir: str | os.PathLike,
    num: int,
    seed: int = 0,
    size: int = 256,
    num_captions: int = 4,
    progress=None,
    scene_weights: dict[str, float] | None = None,
    shuffle_pairs: bool = False,
) -> Path:
    """Write `num` training renders (no held-out composition) to `out_dir`, resuming a previous run.

    `scene_weights` and `shuffle_pairs` as in `training_example`. `progress`, if given, is called as
    progress(done, num) after each image. Returns the metadata path.
    """
    if num < 1:
        raise ValueError(f"the number of images must be at least 1, got {num}")
    if scene_weights is not None:
        check_scene_weights(scene_weights)
        scene_weights = {t: float(w) for t, w in scene_weights.items()}
    out = Path(out_dir)
    settings = _settings(seed, size, num_captions, scene_weights, shuffle_pairs)
    info_path = out / "world.json"
    keys = ("seed", "size", "num_captions", "scene_weights", "shuffle_pairs")
    if info_path.is_file():
        previous = {"shuffle_pairs": False, **json.loads(info_path.read_text())}  # older folders: no shuffling
        if {k: previous.get(k) for k in keys} != {k: settings[k] for k in keys}:
            raise ValueError(f"{out} holds a dataset with other settings ({previous}); use another folder")
    out.mkdir(parents=True, exist_ok=True)
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
                scene, texts = training_example(i, seed, num_captions, scene_weights, shuffle_pairs)
                render(scene, size).save(out / name, optimize=False)
                row = {"file_name": name, "text": texts[0], "captions": texts, "scene": scene.to_json()}
                f.write(json.dumps(row) + "\n")
                f.flush()
            if progress is not None:
                progress(i + 1, num)
    return meta_path
