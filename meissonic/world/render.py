"""Rendering a `Scene` with Pillow: flat shapes on a solid background, anti-aliased by supersampling."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from meissonic.world.scene import BACKGROUNDS, COLOURS, Scene, SceneObject

STAR_INNER_RATIO = 0.5  # inner / outer radius of the five-pointed star


def shape_polygon(obj: SceneObject, side: float) -> list[tuple[float, float]]:
    """Vertices (pixels, image of `side` pixels) of a square, triangle or star; its bounding box is centred on
    the object's centre and is `obj.extent * side` wide."""
    cx, cy, half = obj.cx * side, obj.cy * side, obj.extent * side / 2
    if obj.kind == "square":
        return [
            (cx - half, cy - half),
            (cx + half, cy - half),
            (cx + half, cy + half),
            (cx - half, cy + half),
        ]
    if obj.kind == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if obj.kind == "star":
        outer = half / math.sin(math.radians(72))
        # Centre the bounding box (top point to lower points) on cy.
        oy = cy + outer * (1 - math.cos(math.radians(36))) / 2
        points = []
        for i in range(10):
            radius = outer if i % 2 == 0 else outer * STAR_INNER_RATIO
            angle = math.radians(-90 + 36 * i)
            points.append((cx + radius * math.cos(angle), oy + radius * math.sin(angle)))
        return points
    raise ValueError(f"no polygon for kind {obj.kind!r}")


def render(scene: Scene, size: int = 256, supersample: int = 4) -> Image.Image:
    """An RGB image of `scene`, `size` x `size` pixels. `supersample` > 1 anti-aliases the edges."""
    side = size * supersample
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = COLOURS[obj.colour]
        if obj.kind == "circle":
            half = obj.extent * side / 2
            draw.ellipse(
                [obj.cx * side - half, obj.cy * side - half, obj.cx * side + half, obj.cy * side + half], fill
            )
        else:
            draw.polygon(shape_polygon(obj, side), fill=fill)
    if supersample > 1:
        image = image.resize((size, size), Image.Resampling.BOX)
    return image
