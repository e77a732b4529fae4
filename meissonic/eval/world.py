"""GenEval-style scoring of generated images against world `Task`s, read by the analytic detector.

Categories (a task is only scored in the categories it states):

* ``kind``: the set of detected shape kinds equals the set of required kinds;
* ``colour``: the set of detected object colours equals the set of required colours;
* ``count``: the number of detected shapes equals the number required (all groups together);
* ``position`` (tasks with a relation): some detected shape of the first group stands in the stated relation
  to some detected shape of the second (bounding-box centres, dominant axis decides: `relation_holds`);
* ``background`` (tasks that state one): the detected background colour is the required one.

A task is *correct* when the detected multiset of (kind, colour) equals the required one (so colours must be
bound to the right kinds and counts must be exact) and its position and background checks hold. ``overall`` is
the fraction of correct tasks (the mean over tasks, not over categories); ``task_types`` gives that fraction
per task type (single, count, pair, position), whose mean is GenEval's overall when the task list is balanced.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from meissonic.world.detect import DetectedScene, Detection, detect
from meissonic.world.scene import Scene, Task

CATEGORIES: tuple[str, ...] = ("kind", "colour", "count", "position", "background")


@dataclass
class TaskResult:
    """The checks of one task on one image."""

    task: Task
    detected: DetectedScene
    checks: dict[str, bool] = field(default_factory=dict)
    correct: bool = False

    def to_dict(self) -> dict:
        return {
            "text": self.task.text,
            "task_type": self.task.task_type,
            "checks": self.checks,
            "correct": self.correct,
            "detected": {
                "background": self.detected.background,
                "objects": [
                    {"kind": d.kind, "colour": d.colour, "cx": round(d.cx, 4), "cy": round(d.cy, 4)}
                    for d in self.detected.objects
                ],
            },
        }


def relation_holds(a: Detection, b: Detection, relation: str) -> bool:
    """`a` is `relation` `b`: the centres differ along the relation's axis at least as much as across it."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if relation == "left of":
        return dx > 0 and dx >= abs(dy)
    if relation == "right of":
        return dx < 0 and -dx >= abs(dy)
    if relation == "above":
        return dy > 0 and dy >= abs(dx)
    if relation == "below":
        return dy < 0 and -dy >= abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def check_task(task: Task, detected: DetectedScene) -> TaskResult:
    """Score one detected image against one task (see the module docstring for the rules)."""
    objs = detected.objects
    checks = {
        "kind": {d.kind for d in objs} == {o.kind for o in task.objects},
        "colour": {d.colour for d in objs} == {o.colour for o in task.objects},
        "count": len(objs) == sum(o.count for o in task.objects),
    }
    if task.relation is not None:
        ga, gb = task.objects[task.relation.a], task.objects[task.relation.b]
        firsts = [d for d in objs if (d.kind, d.colour) == (ga.kind, ga.colour)]
        seconds = [d for d in objs if (d.kind, d.colour) == (gb.kind, gb.colour)]
        checks["position"] = any(
            relation_holds(a, b, task.relation.relation) for a in firsts for b in seconds if a is not b
        )
    if task.background is not None:
        checks["background"] = detected.background == task.background
    required = Counter({(o.kind, o.colour): o.count for o in task.objects})
    bound = Counter((d.kind, d.colour) for d in objs) == required
    correct = bound and checks.get("position", True) and checks.get("background", True)
    return TaskResult(task, detected, checks, correct)


def score_detections(results: Sequence[TaskResult]) -> dict:
    """Aggregate task results: overall, per category, per task type, and the per-task records."""
    per_category: dict[str, list[bool]] = defaultdict(list)
    per_type: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        for name, ok in result.checks.items():
            per_category[name].append(ok)
        per_type[result.task.task_type].append(result.correct)
    return {
        "overall": float(np.mean([r.correct for r in results])) if results else float("nan"),
        "num_tasks": len(results),
        "categories": {c: float(np.mean(per_category[c])) for c in CATEGORIES if per_category[c]},
        "category_counts": {c: len(per_category[c]) for c in CATEGORIES if per_category[c]},
        "task_types": {t: float(np.mean(v)) for t, v in sorted(per_type.items())},
        "tasks": [r.to_dict() for r in results],
    }


def score(
    images: Iterable[Image.Image | np.ndarray], tasks: Sequence[Task], chance_shifts: int = 0, **detect_kwargs
) -> dict:
    """Detect every image and score it against its task. Returns the dict of `score_detections`.

    With `chance_shifts` = k > 0 it also holds ``chance``: the same images scored against the wrong tasks (image i
    against task i + s for s = 1..k, cyclically), i.e. what images that ignore their prompt would score on this
    task mix. A model follows prompts as far as its scores exceed these.
    """
    images = list(images)
    if len(images) != len(tasks):
        raise ValueError(f"{len(images)} images for {len(tasks)} tasks")
    detections = [detect(image, **detect_kwargs) for image in images]
    out = score_detections([check_task(task, det) for task, det in zip(tasks, detections, strict=True)])
    shifts = range(1, min(chance_shifts, len(tasks) - 1) + 1)
    if shifts:
        n = len(tasks)
        wrong = [check_task(tasks[(i + s) % n], det) for s in shifts for i, det in enumerate(detections)]
        chance = score_detections(wrong)
        out["chance"] = {"overall": chance["overall"], "categories": chance["categories"], "shifts": len(shifts)}
    return out


def pass_at_k(runs: Sequence[dict]) -> dict:
    """pass@k from k `score` results over the same tasks (one image per task each): the share of tasks that at
    least one of the k images gets right, overall and per task type, and the mean single-image score."""
    if not runs:
        raise ValueError("pass_at_k needs at least one scored run")
    records = [run["tasks"] for run in runs]
    texts = [t["text"] for t in records[0]]
    if any([t["text"] for t in r] != texts for r in records):
        raise ValueError("pass_at_k needs runs over the same tasks in the same order")
    passed = [any(r[i]["correct"] for r in records) for i in range(len(records[0]))]
    per_type: dict[str, list[bool]] = defaultdict(list)
    for task, ok in zip(records[0], passed, strict=True):
        per_type[task["task_type"]].append(ok)
    return {
        "k": len(runs),
        "overall": float(np.mean(passed)),
        "task_types": {t: float(np.mean(v)) for t, v in sorted(per_type.items())},
        "mean_single": float(np.mean([run["overall"] for run in runs])),
    }


def detector_agreement(
    scenes: Sequence[Scene], images: Sequence[Image.Image | np.ndarray], centre_tolerance: float = 0.03
) -> dict[str, float]:
    """How often the detector reads back what was drawn (per attribute, over scenes or objects).

    ``background`` and ``count`` and ``scene`` (everything right) are per scene; ``kind``, ``colour`` and
    ``centre`` (within `centre_tolerance` of the image side) are per drawn object, compared with the detection
    nearest to it.
    """
    tallies: dict[str, list[bool]] = defaultdict(list)
    for scene, image in zip(scenes, images, strict=True):
        det = detect(image)
        tallies["background"].append(det.background == scene.background)
        tallies["count"].append(len(det.objects) == len(scene.objects))
        object_ok = []
        for obj in scene.objects:
            if not det.objects:
                ok = {"kind": False, "colour": False, "centre": False}
            else:
                near = min(det.objects, key=lambda d, o=obj: (d.cx - o.cx) ** 2 + (d.cy - o.cy) ** 2)
                ok = {
                    "kind": near.kind == obj.kind,
                    "colour": near.colour == obj.colour,
                    "centre": max(abs(near.cx - obj.cx), abs(near.cy - obj.cy)) <= centre_tolerance,
                }
            for name, value in ok.items():
                tallies[name].append(value)
            object_ok.append(all(ok.values()))
        tallies["scene"].append(tallies["background"][-1] and tallies["count"][-1] and all(object_ok))
    return {name: float(np.mean(values)) for name, values in tallies.items()}
