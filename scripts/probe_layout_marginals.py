"""Where does a world model put each object of "A <relation> B" before it has drawn anything?

With every token masked (where sampling starts), the transformer's per-cell probabilities are the model's whole
belief about the layout. For position prompts of the training distribution, this script sums, per object, the
probability of the codes that only that object's colour produces (found by VQ-encoding renders), and reports the
share of that mass in the left half (horizontal relations) or the top half (vertical ones), conditionally and
with guidance. A model that read the relation would put the subject's mass almost all in the left half for
"left of" and almost none for "right of".

It also asks whether the model knows, at full masking, where each image position is: a ridge probe on the image
stream after some blocks, fitted on half of 64 training prompts and tested on the other half, tells which half
(left/right, top/bottom) of the compressed grid each position is in.

Usage: python scripts/probe_layout_marginals.py MODEL [MODEL ...] [--prompts 24] [--guidance 1 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from meissonic.pipelines import MeissonicPipeline  # noqa: E402
from meissonic.pipelines.images import images_to_tensor  # noqa: E402
from meissonic.world import BACKGROUNDS, COLOURS, KINDS, Scene, SceneObject, render, training_tasks  # noqa: E402

RELATIONS = {"to the left of": "horizontal", "to the right of": "horizontal", "above": "vertical",
             "below": "vertical"}


def colour_codes(pipe: MeissonicPipeline) -> dict[str, list[int]]:
    """Codes found inside large circles and squares of each colour (on every background), used by no other colour."""
    pixels = pipe.config.default_resolution
    found: dict[str, Counter] = {}
    for colour in COLOURS:
        found[colour] = Counter()
        for background in BACKGROUNDS:
            for kind in ("circle", "square"):
                scene = Scene(background, (SceneObject(kind, colour, "large", 0.5, 0.5),), None, "single")
                with torch.no_grad():
                    grid = pipe.encode_images(images_to_tensor([render(scene, pixels)], pixels, pixels))[0]
                middle = slice(grid.shape[-1] * 3 // 8, grid.shape[-1] * 5 // 8)
                found[colour].update(grid[middle, middle].flatten().tolist())
    common = {colour: {code for code, n in counts.items() if n > 20} for colour, counts in found.items()}
    return {colour: sorted(codes - set().union(*(common[c] for c in common if c != colour)))
            for colour, codes in common.items()}


@torch.no_grad()
def fully_masked_logits(pipe: MeissonicPipeline, texts: list[str]) -> torch.Tensor:
    """The transformer's logits (P, C, h, w) for `texts` on a grid with every token masked (no guidance)."""
    transformer = pipe.transformer
    states, pooled = pipe.encode_prompt(texts)
    side = pipe.config.default_resolution
    tokens = torch.full((len(texts), side // pipe.vq_scale, side // pipe.vq_scale), transformer.mask_token_id)
    micro = pipe.micro_conditions(len(texts), side, side, None, (0, 0), 6.0)
    return transformer(tokens, states.to(transformer.dtype), pooled.to(transformer.dtype),
                       pipe.model_timestep(0, 1, tokens), micro).float()


def position_probe(pipe: MeissonicPipeline, prompts: int = 64, seed: int = 3, ridge: float = 10.0) -> None:
    """Print, per block, how often a linear probe on the fully masked image stream tells each position's half."""
    transformer = pipe.transformer
    blocks = {"dual 1": transformer.transformer_blocks[0], "dual last": transformer.transformer_blocks[-1],
              "single 5": transformer.single_transformer_blocks[min(4, len(transformer.single_transformer_blocks) - 1)],
              "single last": transformer.single_transformer_blocks[-1]}
    outputs: dict[str, torch.Tensor] = {}
    hooks = [block.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(
        name, (out[0] if isinstance(out, tuple) else out).float())) for name, block in blocks.items()]
    texts = [task.text for task in training_tasks(prompts, seed=seed)]
    fully_masked_logits(pipe, texts)
    for hook in hooks:
        hook.remove()
    side = pipe.config.default_resolution // pipe.vq_scale // transformer.token_stride  # the grid inside the blocks
    rows, cols = np.divmod(np.arange(side * side), side)
    fit = len(texts) // 2 * side * side
    for name, out in outputs.items():
        x = out[:, -side * side:].reshape(-1, out.shape[-1]).numpy()  # image positions follow the text
        x = (x - x[:fit].mean(0)) / (x[:fit].std(0) + 1e-6)
        report = []
        for axis, values in (("row", rows), ("column", cols)):
            target = np.tile(values >= side / 2, len(texts)).astype(float) * 2 - 1
            weights = np.linalg.solve(x[:fit].T @ x[:fit] + ridge * np.eye(x.shape[1]), x[:fit].T @ target[:fit])
            right = ((x[fit:] @ weights > 0) == (target[fit:] > 0)).mean()
            report.append(f"{axis} half right for {right:.3f}")
        print(f"  full masking, after block {name:11s}: " + ", ".join(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    colours = list(COLOURS)
    objects = []
    for _ in range(args.prompts):
        a, b = rng.choice(len(colours), 2, replace=False)
        objects.append((colours[a], KINDS[rng.integers(4)], colours[b], KINDS[rng.integers(4)]))
    for model in args.models:
        pipe = MeissonicPipeline.from_pretrained(model)
        codes = colour_codes(pipe)
        size = pipe.config.default_resolution // pipe.vq_scale
        print(f"{model}: codes per colour {codes}")
        for relation, axis in RELATIONS.items():
            texts = [f"a {ca} {ka} {relation} a {cb} {kb}" for ca, ka, cb, kb in objects] + [""]
            logits = fully_masked_logits(pipe, texts)  # the last row is the empty prompt's
            for scale in args.guidance:
                probs = (logits[-1:] + scale * (logits[:-1] - logits[-1:])).softmax(1)  # (P, C, h, w)
                shares = []
                for row, (ca, _, cb, _) in enumerate(objects):
                    share = []
                    for colour in (ca, cb):
                        mass = probs[row, codes[colour]].sum(0)  # (h, w)
                        first = mass[:, : size // 2] if axis == "horizontal" else mass[: size // 2]
                        share.append((first.sum() / mass.sum()).item())
                    shares.append(share)
                subject, other = np.mean(shares, axis=0)
                half = "left" if axis == "horizontal" else "top"
                print(f"  {relation:16s} guidance {scale:g}: share of the mass in the {half} half: subject "
                      f"{subject:.3f}, object {other:.3f}")
        position_probe(pipe)


if __name__ == "__main__":
    main()
