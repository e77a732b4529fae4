"""The world's vocabulary, the `Scene` record, scene sampling and the held-out split.

A scene is a solid background with 1-4 flat-coloured shapes. Everything is drawn from small, well separated
vocabularies so that a tiny model (16x16 token grid, CPU training) can learn it and an analytic detector can
read it back exactly:

* kinds: circle, square, triangle (apex up), star (five points, apex up);
* object colours: red, orange, yellow, green, blue, purple (saturated, >= 90 apart in RGB);
* backgrounds: white, black, gray (never an object colour, so objects always stand out);
* sizes: small (0.22 of the image side) and large (0.32);
* scene types: ``single`` (one object), ``count`` (2-4 identical objects), ``pair`` (two different objects,
  arranged horizontally or vertically; captioned with or without their relation).

Colour emoji were considered and left out: at 16x16 tokens they are not learnable by a CPU-sized model, the
detector could not read them exactly, and they would tie the package to an optional system font.

Held-out compositions (never present in any scene `training_scene` returns; `heldout_task` always
contains at least one of them; `is_heldout` is the rule):

* colour-kind pairs `HELDOUT_PAIRS`: red triangle, green star, blue circle;
* count-kind pairs `HELDOUT_COUNTS`: four triangles (any colour);
* spatial arrangements `HELDOUT_ARRANGEMENTS`: a star left of a square (equivalently a square right of a
  star), a circle above a triangle (equivalently a triangle below a circle). Arrangements are judged on the
  geometry, whatever the caption says, so the model never sees them drawn.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (150, 40, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SIZES: dict[str, float] = {"small": 0.22, "large": 0.32}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SCENE_TYPES: tuple[str, ...] = ("single", "count", "pair", "position")

HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "star"), ("blue", "circle")}
)
HELDOUT_COUNTS: frozenset[tuple[int, str]] = frozenset({(4, "triangle")})
# (axis, first kind, second kind): first is left of (horizontal) / above (vertical) second.
HELDOUT_ARRANGEMENTS: frozenset[tuple[str, str, str]] = frozenset(
    {("horizontal", "star", "square"), ("vertical", "circle", "triangle")}
)


@dataclass(frozen=True)
class SceneObject:
    """One shape: its kind, colour, size name and centre (fractions of the image side, y grows downwards)."""

    kind: str
    colour: str
    size: str
    cx: float
    cy: float

    @property
    def extent(self) -> float:
        """Width (and height) of the shape as a fraction of the image side."""
        return SIZES[self.size]


@dataclass(frozen=True)
class Relation:
    """`objects[a]` is `relation` `objects[b]` (indices into the scene's objects or a task's groups)."""

    a: int
    relation: str
    b: int


@dataclass(frozen=True)
class Scene:
    """A renderable scene: background, objects and (for two-object scenes) the relation that holds."""

    background: str
    objects: tuple[SceneObject, ...]
    relation: Relation | None = None
    scene_type: str = "single"

    def groups(self) -> list[tuple[str, str, int]]:
        """(kind, colour, count) per distinct kind-colour pair, in order of first appearance."""
        counts = Counter((o.kind, o.colour) for o in self.objects)
        seen: dict[tuple[str, str], None] = dict.fromkeys((o.kind, o.colour) for o in self.objects)
        return [(kind, colour, counts[(kind, colour)]) for kind, colour in seen]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (inverse: `Scene.from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        relation = data.get("relation")
        return cls(
            background=data["background"],
            objects=tuple(SceneObject(**o) for o in data["objects"]),
            relation=Relation(**relation) if relation else None,
            scene_type=data.get("scene_type", "single"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class ObjectSpec:
    """A required group of objects: `count` shapes of `kind` in `colour`."""

    kind: str
    colour: str
    count: int = 1


@dataclass(frozen=True)
class Task:
    """An evaluation prompt with the structured requirements it states (no free-text parsing needed).

    `objects` lists the required groups; `relation` (indices into `objects`) and `background` are optional.
    `scene` is one exact rendering of the task, useful as a reference image and for tests.
    """

    text: str
    objects: tuple[ObjectSpec, ...]
    relation: Relation | None = None
    background: str | None = None
    task_type: str = "single"
    scene: Scene | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["scene"] = self.scene.to_dict() if self.scene else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Task:
        relation = data.get("relation")
        return cls(
            text=data["text"],
            objects=tuple(ObjectSpec(**o) for o in data["objects"]),
            relation=Relation(**relation) if relation else None,
            background=data.get("background"),
            task_type=data.get("task_type", "single"),
            scene=Scene.from_dict(data["scene"]) if data.get("scene") else None,
        )


# ------------------------------------------------------------ held-out rule


def arrangement(a: SceneObject, b: SceneObject) -> tuple[str, str, str]:
    """The canonical arrangement of two objects: (axis, kind first, kind second), first = left / upper one."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return ("horizontal", a.kind, b.kind) if dx > 0 else ("horizontal", b.kind, a.kind)
    return ("vertical", a.kind, b.kind) if dy > 0 else ("vertical", b.kind, a.kind)


def heldout_reasons(scene: Scene) -> list[str]:
    """Which held-out compositions `scene` contains (empty list: it may appear in training)."""
    reasons = [f"pair:{o.colour} {o.kind}" for o in scene.objects if (o.colour, o.kind) in HELDOUT_PAIRS]
    kinds = Counter(o.kind for o in scene.objects)
    reasons += [f"count:{n} {k}" for k, n in kinds.items() if (n, k) in HELDOUT_COUNTS]
    if len(scene.objects) == 2:
        arr = arrangement(*scene.objects)
        if arr in HELDOUT_ARRANGEMENTS:
            reasons.append("arrangement:" + " ".join(arr))
    return sorted(set(reasons))


def is_heldout(scene: Scene) -> bool:
    """True when the scene contains a held-out composition (see the module docstring)."""
    return bool(heldout_reasons(scene))


# ------------------------------------------------------------ sampling


def _choice(rng: np.random.Generator, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


def _layout(
    rng: np.random.Generator, n: int, extents: list[float], axis: str | None
) -> list[tuple[float, float]]:
    """Centres for `n` non-overlapping shapes. Two shapes use `axis`; three or four use 2x2 grid cells."""
    if n == 1:
        half = extents[0] / 2 + 0.04
        return [(float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half)))]
    if n == 2:
        # Along the axis: one in each half; across it: nearly aligned, so the relation is unambiguous.
        along = []
        for i, ext in enumerate(extents):
            lo, hi = (
                (ext / 2 + 0.04, 0.5 - ext / 2 - 0.02)
                if i == 0
                else (0.5 + ext / 2 + 0.02, 1 - ext / 2 - 0.04)
            )
            along.append(float(rng.uniform(lo, max(lo, hi))))
        ext = max(extents)
        base = float(rng.uniform(ext / 2 + 0.1, 1 - ext / 2 - 0.1))
        across = [base + float(rng.uniform(-0.06, 0.06)) for _ in range(2)]
        if axis == "horizontal":
            return list(zip(along, across, strict=True))
        return list(zip(across, along, strict=True))
    cells = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
    order = rng.permutation(4)[:n]
    centres = []
    for i, cell in enumerate(order):
        slack = max(0.0, (0.5 - extents[i]) / 2 - 0.03)
        cx, cy = cells[int(cell)]
        centres.append((cx + float(rng.uniform(-slack, slack)), cy + float(rng.uniform(-slack, slack))))
    return centres


def _relation_for(scene_objects: list[SceneObject], rng: np.random.Generator) -> Relation:
    """A true relation between the two objects, phrased from either one's point of view."""
    axis, _, _ = arrangement(*scene_objects)
    a, b = (0, 1) if rng.random() < 0.5 else (1, 0)
    oa, ob = scene_objects[a], scene_objects[b]
    if axis == "horizontal":
        rel = "left of" if oa.cx < ob.cx else "right of"
    else:
        rel = "above" if oa.cy < ob.cy else "below"
    return Relation(a, rel, b)


def sample_scene(rng: np.random.Generator, scene_type: str | None = None) -> Scene:
    """One random scene from the whole world (held-out compositions included)."""
    scene_type = scene_type or _choice(rng, ("single", "count", "pair", "position"))
    background = _choice(rng, BACKGROUNDS)
    if scene_type == "single":
        specs = [(_choice(rng, KINDS), _choice(rng, COLOURS))]
    elif scene_type == "count":
        n = int(rng.integers(2, 5))
        specs = [(_choice(rng, KINDS), _choice(rng, COLOURS))] * n
    elif scene_type in ("pair", "position"):
        while True:
            specs = [(_choice(rng, KINDS), _choice(rng, COLOURS)) for _ in range(2)]
            if specs[0] != specs[1]:
                break
    else:
        raise ValueError(f"unknown scene type {scene_type!r}; expected one of {SCENE_TYPES}")
    # Objects of a counted group share one size; the two objects of a pair are sized independently.
    sizes = (
        [_choice(rng, SIZES)] * len(specs) if scene_type == "count" else [_choice(rng, SIZES) for _ in specs]
    )
    axis = _choice(rng, ("horizontal", "vertical")) if len(specs) == 2 else None
    centres = _layout(rng, len(specs), [SIZES[s] for s in sizes], axis)
    objects = [
        SceneObject(kind, colour, s, cx, cy)
        for (kind, colour), s, (cx, cy) in zip(specs, sizes, centres, strict=True)
    ]
    relation = None
    if scene_type == "position":
        relation = _relation_for(objects, rng)
        # Captions name the subject first: object order = caption order, so the relation reads (0, rel, 1).
        objects = [objects[relation.a], objects[relation.b]]
        relation = Relation(0, relation.relation, 1)
    return Scene(background, tuple(objects), relation, scene_type)


def training_scene(rng: np.random.Generator, scene_type: str | None = None) -> Scene:
    """A random scene with no held-out composition (rejection sampling from `sample_scene`)."""
    while True:
        scene = sample_scene(rng, scene_type)
        if not is_heldout(scene):
            return scene


def heldout_scene(rng: np.random.Generator, scene_type: str | None = None) -> Scene:
    """A random scene containing at least one held-out composition."""
    scene_type = scene_type or _choice(rng, ("single", "count", "pair", "position"))
    for _ in range(10_000):
        scene = sample_scene(rng, scene_type)
        if is_heldout(scene):
            return scene
    raise RuntimeError(f"no held-out composition found for scene type {scene_type!r}")
