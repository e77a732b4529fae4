"""Where does a world model put each object of "A <relation> B" before it has drawn anything?

With every token masked (where sampling starts), the transformer's per-cell probabilities are the model's whole
belief about the layout. For position prompts of the training distribution (background stated), this script
sums, per object, the probability of the codes that only that object's colour produces on that background (found
by VQ-encoding renders; a merged code is not a colour, so codes are found per background), and reports the share
of that mass in the left half (horizontal relations) or the top half (vertical ones), conditionally and with
guidance. The same shares measured on renders of position scenes come first: what a model that read the
relation would approach (about 0.9 for "left of", 0.2 for "right of"), and the check that the codes follow the
objects.

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
from meissonic.world import BACKGROUNDS, COLOURS, KINDS, Scene, SceneObject, render, training_tasks
from meissonic.world.scene import training_scene  # noqa: E402

RELATIONS = {"to the left of": "horizontal", "to the right of": "horizontal", "above": "vertical",
             "below": "vertical"}


def encode_render(pipe: MeissonicPipeline, scene: Scene) -> torch.Tensor:
    """The VQ token grid (h, w) of `scene` rendered at the pipeline's resolution."""
    pixels = pipe.config.default_resolution
    with torch.no_grad():
        return pipe.encode_images(images_to_tensor([render(scene, pixels)], pixels, pixels))[0]


def first_half_share(mass: torch.Tensor, axis: str) -> float:
    """The share of a (h, w) mass in the left half (axis "horizontal") or the top half ("vertical")."""
    first = mass[:, : mass.shape[1] // 2] if axis == "horizontal" else mass[: mass.shape[0] // 2]
    return (first.sum() / mass.sum().clamp(min=1e-12)).item()


def colour_codes(pipe: MeissonicPipeline) -> dict[tuple[str, str], list[int]]:
    """Per (colour, background): the codes that shapes of that colour add to an empty render of that background
    and that neither the background nor another colour's shapes on it produce.

    The merged codebook is small and its codes are not colours: the decoder reads colour from a code's
    neighbours, so one code draws the inside of red shapes on white and an empty gray background, and the
    codes of a colour differ between backgrounds. Hence codes per background, found on whole renders.
    """

    def counts(scene: Scene) -> Counter:
        return Counter(encode_render(pipe, scene).flatten().tolist())

    found = {}
    for background in BACKGROUNDS:
        empty = counts(Scene(background, (), None, "single"))
        added: dict[str, Counter] = {colour: Counter() for colour in COLOURS}
        for colour in COLOURS:
            for kind in KINDS:
                for size, (cx, cy) in (("small", (0.3, 0.35)), ("large", (0.6, 0.6))):
                    drawn = counts(Scene(background, (SceneObject(kind, colour, size, cx, cy),), None, "single"))
                    added[colour].update({code: n - empty[code] for code, n in drawn.items() if n > empty[code]})
        mine = {colour: {code for code, n in c.items() if n > 40} for colour, c in added.items()}
        for colour in COLOURS:
            others = set().union(*(mine[c] for c in COLOURS if c != colour))
            found[colour, background] = sorted(mine[colour] - others - {c for c, n in empty.items() if n > 20})
    return found


def data_shares(pipe: MeissonicPipeline, codes: dict, scenes: int = 400, seed: int = 7) -> None:
    """The same shares measured on renders of training position scenes: what a model that read the relation
    would approach, and a check that the codes follow the objects."""
    rng = np.random.default_rng(seed)
    shares: dict[str, list] = {}
    while sum(map(len, shares.values())) < scenes:
        scene = training_scene(rng, "position")
        subject, other = scene.objects
        if not (codes[subject.colour, scene.background] and codes[other.colour, scene.background]):
            continue
        grid = encode_render(pipe, scene)
        axis = "horizontal" if scene.relation.relation in ("left of", "right of") else "vertical"
        share = [first_half_share(torch.isin(grid, torch.tensor(codes[o.colour, scene.background])).float(), axis)
                 for o in (subject, other)]
        shares.setdefault(scene.relation.relation, []).append(share)
    for relation, rows in shares.items():
        subject, other = np.mean(rows, axis=0)
        print(f"  renders, {relation:9s} ({len(rows):3d}): share in the left / top half: subject {subject:.3f}, "
              f"object {other:.3f}")


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
    parser.add_argument("--no-position-probe", dest="position_probe", action="store_false",
                        help="skip the ridge probe of where each position is")
    args = parser.parse_args()

    for model in args.models:
        pipe = MeissonicPipeline.from_pretrained(model)
        codes = colour_codes(pipe)
        print(f"{model}: codes per (colour, background) {codes}")
        data_shares(pipe, codes)
        rng = np.random.default_rng(args.seed)  # the same prompts for every model with the same VQ
        objects = []  # (colour, kind, colour, kind, background), colours with codes of their own there
        while len(objects) < args.prompts:
            background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
            colours = [colour for colour in COLOURS if codes[colour, background]]
            a, b = rng.choice(len(colours), 2, replace=False)
            objects.append((colours[a], KINDS[rng.integers(4)], colours[b], KINDS[rng.integers(4)], background))
        for relation, axis in RELATIONS.items():
            texts = [f"a {ca} {ka} {relation} a {cb} {kb} on a {bg} background"
                     for ca, ka, cb, kb, bg in objects] + [""]
            logits = fully_masked_logits(pipe, texts)  # the last row is the empty prompt's
            for scale in args.guidance:
                probs = (logits[-1:] + scale * (logits[:-1] - logits[-1:])).softmax(1)  # (P, C, h, w)
                shares = [[first_half_share(probs[row, codes[colour, background]].sum(0), axis) for colour in (ca, cb)]
                          for row, (ca, _, cb, _, background) in enumerate(objects)]
                subject, other = np.mean(shares, axis=0)
                half = "left" if axis == "horizontal" else "top"
                print(f"  {relation:16s} guidance {scale:g}: share of the mass in the {half} half: subject "
                      f"{subject:.3f}, object {other:.3f}")
        if args.position_probe:
            position_probe(pipe)


if __name__ == "__main__":
    main()
