"""Can a world transformer learn, with every token masked, to put an object on the side its caption states?

A capacity check, not a training recipe: it fine-tunes a copy of MODEL's transformer (in memory, nothing is
written) on renders of one red circle and one blue square on white, at full masking only, and prints the share of
the red circle's code mass in the left half of the fully masked prediction for two captions as it trains.

--layout relation: "... to the left of ..." renders have the circle in the left half, "... to the right of ..."
  ones in the right half, so the model must read the relation word.
--layout fixed: the circle is in the left half under both captions (an absolute layout, no text needed).

Usage: python scripts/overfit_relation_full_mask.py [MODEL] [--layout relation|fixed] [--steps 100] [--lr 3e-4]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from probe_layout_marginals import colour_codes, first_half_share  # noqa: E402

from meissonic.interfaces.commands.common import default_model_folder  # noqa: E402
from meissonic.pipelines import MeissonicPipeline  # noqa: E402
from meissonic.pipelines.images import images_to_tensor  # noqa: E402
from meissonic.world import Scene, SceneObject, render  # noqa: E402

CAPTIONS = ("a red circle to the left of a blue square", "a red circle to the right of a blue square")


def renders(pipe: MeissonicPipeline, circle_left: bool, count: int, rng: np.random.Generator) -> torch.Tensor:
    """Token grids of `count` scenes laid out like the world's position scenes (one object in each half)."""
    pixels = pipe.config.default_resolution
    images = []
    for _ in range(count):
        sizes = rng.choice(["small", "large"], 2)
        circle = SceneObject("circle", "red", sizes[0], 0.0, 0.0)
        square = SceneObject("square", "blue", sizes[1], 0.0, 0.0)
        left, right = (circle, square) if circle_left else (square, circle)
        row = float(rng.uniform(0.3, 0.7))
        xs = (rng.uniform(left.extent / 2 + 0.04, 0.5 - left.extent / 2 - 0.02),
              rng.uniform(0.5 + right.extent / 2 + 0.02, 1 - right.extent / 2 - 0.04))
        objects = tuple(SceneObject(o.kind, o.colour, o.size, float(x), row + float(rng.uniform(-0.05, 0.05)))
                        for o, x in zip((left, right), xs, strict=True))
        images.append(render(Scene("white", objects, None, "position"), pixels))
    with torch.no_grad():
        return pipe.encode_images(images_to_tensor(images, pixels, pixels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="pipeline folder (default: the embedded model)")
    parser.add_argument("--layout", choices=("relation", "fixed"), default="relation")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--renders", type=int, default=96, help="renders per caption")
    args = parser.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pipe = MeissonicPipeline.from_pretrained(args.model or default_model_folder())
    red = torch.tensor(colour_codes(pipe)["red", "white"])
    grids = [renders(pipe, True, args.renders, rng), renders(pipe, args.layout == "fixed", args.renders, rng)]
    states, pooled = pipe.encode_prompt(list(CAPTIONS))
    model = pipe.transformer.float().train()
    mask_id = model.mask_token_id
    height, width = grids[0].shape[-2:]
    micro = torch.tensor([[width * pipe.vq_scale, height * pipe.vq_scale, 0, 0, 6.0]])

    def forward(rows: int, caption: torch.Tensor) -> torch.Tensor:
        tokens = torch.full((rows, height, width), mask_id)
        with torch.autocast("cpu", torch.bfloat16):
            return model(tokens, states[caption], pooled[caption], torch.ones(rows), micro.expand(rows, 5)).float()

    def report(step: int, loss: float | None) -> None:
        with torch.no_grad():
            mass = forward(2, torch.tensor([0, 1])).softmax(1)[:, red].sum(1)  # (2, h, w)
        share = [first_half_share(row, "horizontal") for row in mass]
        loss_text = "" if loss is None else f" loss {loss:.3f}"
        print(f"step {step:4d}{loss_text}: red share of the left half, 'left of' {share[0]:.3f}, "
              f"'right of' {share[1]:.3f}", flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    report(0, None)
    for step in range(1, args.steps + 1):
        index = torch.randint(args.renders, (8,))
        target = torch.cat([grids[0][index], grids[1][index]])
        logits = forward(16, torch.tensor([0] * 8 + [1] * 8))
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            report(step, loss.item())


if __name__ == "__main__":
    main()
