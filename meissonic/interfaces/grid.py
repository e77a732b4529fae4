"""A labelled image grid: one row per prompt, one column per seed."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont


def labelled_grid(images: list[Image.Image], prompts: list[str], seeds: list[int]) -> Image.Image:
    """Images in row-major order (len(prompts) x len(seeds)); each row is headed by its prompt and each cell
    captioned with its seed."""
    rows, columns = len(prompts), len(seeds)
    if len(images) != rows * columns:
        raise ValueError(f"{len(images)} images do not fill a {rows} x {columns} grid")
    width, height = images[0].size
    font = ImageFont.load_default()
    line_height, caption = 12, 14
    wrap = max(8, (columns * width) // 7)
    headers = [textwrap.wrap(prompt, wrap)[:3] or [""] for prompt in prompts]
    header_heights = [line_height * len(lines) + 6 for lines in headers]
    grid = Image.new("RGB", (columns * width, sum(header_heights) + rows * (height + caption)), "white")
    draw = ImageDraw.Draw(grid)
    top = 0
    for row, lines in enumerate(headers):
        for k, line in enumerate(lines):
            draw.text((4, top + 3 + k * line_height), line, fill="black", font=font)
        top += header_heights[row]
        for column, seed in enumerate(seeds):
            grid.paste(images[row * columns + column], (column * width, top))
            draw.text((column * width + 4, top + height + 1), f"seed {seed}", fill="gray", font=font)
        top += height + caption
    return grid
