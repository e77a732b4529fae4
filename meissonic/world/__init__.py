"""A procedurally generated world of coloured shapes: scenes, captions, renders, a detector, a dataset writer.

It is the project's yardstick: prompt-following is measured exactly, because the renderer knows what it drew
and `detect` reads it back. See `meissonic.world.scene` for the vocabulary and the held-out split.
"""

from meissonic.world.captions import caption, captions, parse_caption
from meissonic.world.dataset import training_example, write_dataset
from meissonic.world.detect import DetectedScene, Detection, detect
from meissonic.world.render import render
from meissonic.world.scene import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_ARRANGEMENTS,
    HELDOUT_COUNTS,
    HELDOUT_PAIRS,
    KINDS,
    RELATIONS,
    SIZES,
    ObjectSpec,
    Relation,
    Scene,
    SceneObject,
    Task,
    heldout_reasons,
    heldout_scene,
    is_heldout,
    sample_scene,
    training_scene,
)
from meissonic.world.tasks import heldout_tasks, make_task, task_from_scene, training_tasks

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "HELDOUT_ARRANGEMENTS",
    "HELDOUT_COUNTS",
    "HELDOUT_PAIRS",
    "KINDS",
    "RELATIONS",
    "SIZES",
    "DetectedScene",
    "Detection",
    "ObjectSpec",
    "Relation",
    "Scene",
    "SceneObject",
    "Task",
    "caption",
    "captions",
    "detect",
    "heldout_reasons",
    "heldout_scene",
    "heldout_tasks",
    "is_heldout",
    "make_task",
    "parse_caption",
    "render",
    "sample_scene",
    "task_from_scene",
    "training_example",
    "training_scene",
    "training_tasks",
    "write_dataset",
]
