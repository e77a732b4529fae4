"""Does a world model read one caption word? Two probes on training-split scenes of one type.

Teacher-forced: the renders are VQ-encoded, a share of their tokens masked, and the summed log-likelihood of the
true tokens is compared under each scene's caption and under the same caption with one word swapped (e.g.
"right of" -> "left of"). A model that reads the word scores the true caption higher.
Sampled (--sample N): N held-out prompts containing the word are generated with the model's default sampler
(or SPEC, a SamplerOptions field list) and the detector says how many came out right.

    python scripts/probe_caption_words.py MODEL --swap "right of=left of" --swap "below=above" --scene position
    python scripts/probe_caption_words.py MODEL --swap "three=four" --scene count --objects 3 --sample 32
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from meissonic.eval.world import check_task
from meissonic.pipelines import MeissonicPipeline
from meissonic.pipelines.base import resolve_sampler
from meissonic.sampling.options import SamplerOptions
from meissonic.training.objective import masked_inputs, masked_log_likelihood, timestep_for
from meissonic.training.train import encode_ids, tokenize, vq_encode
from meissonic.world import detect, heldout_tasks, render, training_example


def scenes_with_word(swaps: dict[str, str], scene: str, objects: int | None, num: int, seed: int):
    """(scene, caption, swapped caption) for the first `num` training scenes whose first caption has a swap."""
    rows, index = [], 0
    while len(rows) < num:
        example, captions = training_example(index, seed, scene_weights={scene: 1})
        index += 1
        if objects is not None and len(example.objects) != objects:
            continue
        text = f" {captions[0]} "
        for word, other in swaps.items():
            if f" {word} " in text:
                rows.append((example, captions[0], text.replace(f" {word} ", f" {other} ", 1).strip()))
                break
    return rows


@torch.no_grad()
def teacher_forced(pipe: MeissonicPipeline, rows, ratios: list[float], repeats: int = 3) -> None:
    transformer, text_encoder, tokenizer = pipe.transformer, pipe.text_encoder, pipe.tokenizer
    side = pipe.config.default_resolution
    pixels = torch.stack([torch.from_numpy(np.array(render(s, side))).permute(2, 0, 1) for s, _, _ in rows])
    tokens = vq_encode(pipe.vqvae, pixels.float() / 255).long()
    micro = pipe.micro_conditions(len(rows), side, side, None, (0, 0), 6.0)
    conditions = [encode_ids(text_encoder, tokenize(tokenizer, text_encoder, [r[k] for r in rows])) for k in (1, 2)]
    length = tokens[0].numel()
    for ratio in ratios:
        margin = torch.zeros(len(rows))
        for repeat in range(repeats):
            generator = torch.Generator().manual_seed(repeat)
            masks = torch.rand(len(rows), length, generator=generator).argsort(1).argsort(1) < round(ratio * length)
            inputs = masked_inputs(tokens, masks, transformer.mask_token_id)
            timestep = timestep_for(masks.float().mean(1), transformer.config.timestep_convention)
            scores = []
            for states, pooled in conditions:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = transformer(inputs, states, pooled, timestep, micro)
                scores.append(masked_log_likelihood(logits.float(), tokens, masks))
            margin += (scores[0] - scores[1]) / repeats
        print(f"mask ratio {ratio:.2f}: true minus swapped caption {margin.mean():+.1f} nats on average, "
              f"true caption higher for {(margin > 0).sum().item()}/{len(rows)} scenes")


def sampled(
    pipe: MeissonicPipeline, swaps: dict[str, str], scene: str, num: int, spec: str | None, guidance: float | None
) -> None:
    tasks = [t for t in heldout_tasks(20 * num + 200, seed=321) if t.task_type == scene
             and any(f" {w} " in f" {t.text} " for w in swaps)][:num]
    overrides = SamplerOptions.parse(spec).changes() if spec else {}
    options = resolve_sampler(None, overrides, pipe.default_sampler_options)
    checks: dict[str, int] = {}
    correct = 0
    for start in range(0, len(tasks), 8):
        batch = tasks[start : start + 8]
        images = pipe(prompt=[t.text for t in batch], sampler=options, guidance_scale=guidance,
                      generator=[torch.Generator().manual_seed(1000 + start + i) for i in range(len(batch))]).images
        for task, image in zip(batch, images, strict=True):
            result = check_task(task, detect(image))
            correct += result.correct
            for name, ok in result.checks.items():
                checks[name] = checks.get(name, 0) + ok
    print(f"{len(tasks)} held-out prompts ({options.describe()}, guidance {guidance or 'default'}): "
          f"correct {correct}, "
          + ", ".join(f"{name} {n}" for name, n in checks.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--swap", action="append", required=True, metavar="WORD=OTHER")
    parser.add_argument("--scene", default="position", choices=["single", "count", "pair", "position"])
    parser.add_argument("--objects", type=int, default=None, help="only scenes with this many objects")
    parser.add_argument("--num", type=int, default=24, help="scenes for the teacher-forced probe")
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.95, 0.85])
    parser.add_argument("--sample", type=int, default=0, help="held-out prompts to generate (0: none)")
    parser.add_argument("--sampler", default=None, help="SamplerOptions fields on top of the model's default")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the model's")
    args = parser.parse_args()
    swaps = dict(item.split("=", 1) for item in args.swap)
    pipe = MeissonicPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    teacher_forced(pipe, scenes_with_word(swaps, args.scene, args.objects, args.num, args.seed), args.ratios)
    if args.sample:
        sampled(pipe, swaps, args.scene, args.sample, args.sampler, args.guidance_scale)


if __name__ == "__main__":
    main()
