"""Data of the default model's stage 5 (configs/default_model/transformer8_32t1_three.yaml; docs/default_model.md,
"Groups of three learned as restated"): training-split groups of three drawn the way the package's prompt rewrites
restate them, whose rows learn their own tokens, among ordinary renders whose rows learn the stage-4 model's own
distribution (guidance distillation at scale 1).

  render OUT   OUT/three: 1,500 groups of three, large, two in the left column and one in the right
               ("two large A left of a large A"); OUT/restated: 4,500 training renders (`meissonic world render
               --seed 5`'s scenes and first captions). Every caption is restated by `layout_rewrites`; a scene whose
               caption states no background is drawn on the black one the restatement states.
  flag OUT A B  preencoded folders A and B concatenated into OUT, A's rows flagged `token_targets` (they learn
               their own tokens), B's not (they learn the teacher's distribution).

Usage: python scripts/three_targets_data.py render data/three_targets
       python scripts/three_targets_data.py flag runs/default_model/tokens_three THREE_SHARDS RESTATED_SHARDS
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from meissonic.data import concatenate
from meissonic.world.captions import UNSTATED_BACKGROUND, caption, parse_caption, restate
from meissonic.world.dataset import training_example
from meissonic.world.render import render
from meissonic.world.scene import BACKGROUNDS, COLOURS, HELDOUT_PAIRS, KINDS, SIZES, Scene, SceneObject

THREE_SEED, RESTATED_SEED = 77, 5


def with_stated_background(scene: Scene, text: str) -> Scene:
    """`scene` on the background the restatement of `text` states (black where `text` states none)."""
    if parse_caption(text).background is None:
        return dataclasses.replace(scene, background=UNSTATED_BACKGROUND)
    return scene


def restated_three(index: int) -> tuple[Scene, str]:
    """A training-split group of three large shapes, two in the left column and one in the right, and its caption
    restated ("two large A left of a large A")."""
    rng = np.random.default_rng([THREE_SEED, index])
    while True:
        kind, colour = KINDS[rng.integers(len(KINDS))], list(COLOURS)[rng.integers(len(COLOURS))]
        if (colour, kind) not in HELDOUT_PAIRS:
            break
    slack = (0.5 - SIZES["large"]) / 2 - 0.03  # the jitter of the world's own 2x2 cells
    cells = [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25 if rng.random() < 0.5 else 0.75)]
    objects = tuple(SceneObject(kind, colour, "large", cx + float(rng.uniform(-slack, slack)),
                                cy + float(rng.uniform(-slack, slack))) for cx, cy in cells)
    scene = Scene(list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], objects, None, "count")
    text = caption(scene, rng)
    return with_stated_background(scene, text), restate(text)


def restated_render(index: int) -> tuple[Scene, str]:
    """Training render `index` of seed 5 (as `meissonic world render --seed 5` draws it) with its first caption
    restated."""
    scene, texts = training_example(index, RESTATED_SEED, 1)
    return with_stated_background(scene, texts[0]), restate(texts[0])


def write_images(out: Path, examples) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metadata.jsonl").open("w") as f:
        for i, (scene, text) in enumerate(examples):
            name = f"{i:07d}.png"
            render(scene, 256).save(out / name)
            f.write(json.dumps({"file_name": name, "text": text, "scene": scene.to_json()}) + "\n")


def main(argv: list[str]) -> None:
    if argv[:1] == ["render"] and len(argv) == 2:
        out = Path(argv[1])
        write_images(out / "three", (restated_three(i) for i in range(1500)))
        write_images(out / "restated", (restated_render(i) for i in range(4500)))
    elif argv[:1] == ["flag"] and len(argv) == 4:
        print(concatenate(argv[1], argv[2:], token_targets=[True, False]), "rows")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
