"""Evaluation prompts: `Task` records generated together with their structured requirements.

Task lists are balanced over the four task types (single, count, pair, position) in round-robin order, and the
background is stated in half of them. Both lists are deterministic functions of (n, seed).
"""

from __future__ import annotations

import numpy as np

from meissonic.world.captions import caption
from meissonic.world.scene import SCENE_TYPES, ObjectSpec, Scene, Task, heldout_scene, training_scene


def task_from_scene(scene: Scene, text: str, mention_background: bool) -> Task:
    """The requirements a caption of `scene` states (what `caption` produced with the same options)."""
    objects = tuple(ObjectSpec(kind, colour, count) for kind, colour, count in scene.groups())
    return Task(
        text=text,
        objects=objects,
        relation=scene.relation,
        background=scene.background if mention_background else None,
        task_type=scene.scene_type,
        scene=scene,
    )


def make_task(scene: Scene, rng: np.random.Generator, mention_background: bool | None = None) -> Task:
    """Caption `scene` (sizes never mentioned: they are not scored) and record what the caption requires."""
    if mention_background is None:
        mention_background = bool(rng.random() < 0.5)
    text = caption(scene, rng, mention_background=mention_background, mention_size=False)
    return task_from_scene(scene, text, mention_background)


def _tasks(n: int, seed: int, heldout: bool) -> list[Task]:
    rng = np.random.default_rng([seed, int(heldout)])
    out = []
    for i in range(n):
        scene_type = SCENE_TYPES[i % len(SCENE_TYPES)]
        scene = heldout_scene(rng, scene_type) if heldout else training_scene(rng, scene_type)
        out.append(make_task(scene, rng, mention_background=(i // len(SCENE_TYPES)) % 2 == 0))
    return out


def heldout_tasks(n: int, seed: int = 0) -> list[Task]:
    """`n` prompts that each contain at least one held-out composition (generalisation benchmark)."""
    return _tasks(n, seed, heldout=True)


def training_tasks(n: int, seed: int = 0) -> list[Task]:
    """`n` prompts from the training distribution (no held-out composition): the in-distribution benchmark."""
    return _tasks(n, seed, heldout=False)
