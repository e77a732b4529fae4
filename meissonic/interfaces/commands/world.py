"""`meissonic world`: write a training dataset of world renders, or print sample prompts.

meissonic world render --out DIR --num 20000 --seed 0
meissonic world sample --num 8 --split heldout
meissonic world tokenizer --out DIR
meissonic world self-samples --model FOLDER --out DIR --num-prompts 3168 --seed 11
meissonic world preference-pairs --model FOLDER --out DIR --num-prompts 800 --seed 13
meissonic world reinforce --model FOLDER --out RUN --updates 150
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    render = actions.add_parser("render", help="write training renders as an imagefolder dataset (resumable)")
    render.add_argument("--out", required=True, help="dataset folder")
    render.add_argument("--num", type=int, required=True, help="number of images")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--size", type=int, default=256)
    render.add_argument("--num-captions", type=int, default=4, help="paraphrases stored per image")
    render.add_argument(
        "--scene-weights",
        type=_scene_weights,
        default=None,
        metavar="TYPE=W,...",
        help="relative frequency of the scene types, e.g. position=2,pair=1,count=1,single=1 "
        "(types left out are not drawn; default: all four equally)",
    )
    render.add_argument(
        "--shuffle-pairs",
        action="store_true",
        help="name the two objects of a pair scene in random order (default: the left or top one first)",
    )
    sample = actions.add_parser("sample", help="print prompts (training scenes or held-out evaluation tasks)")
    sample.add_argument("--num", type=int, default=8)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--split", choices=["train", "heldout"], default="train")
    sample.add_argument("--json", action="store_true", help="print the structured tasks as JSON lines")
    tokenizer = actions.add_parser("tokenizer", help="write a CLIP tokenizer with one token per caption word")
    tokenizer.add_argument("--out", required=True, help="tokenizer folder (vocab.json + merges.txt)")
    own = _sampling_parser(
        actions, "self-samples",
        "preencoded shards of a model's own correct samples (detector-filtered) and as many training renders",
    )
    own.add_argument("--render-seed", type=int, default=0, help="seed of the paired training renders")
    own.add_argument("--samples-per-prompt", type=int, default=1,
                     help="images drawn per prompt; its first correct one is kept (best-of-K, default 1)")
    pairs = _sampling_parser(
        actions, "preference-pairs",
        "preencoded (right, wrong) pairs of a model's own samples of the same prompts (detector-judged)",
    )
    pairs.add_argument("--samples-per-prompt", type=int, default=4, help="images drawn per prompt (>= 2)")
    policy = actions.add_parser(
        "reinforce",
        help="policy-gradient fine-tuning of a model on the detector's reward for its own samples (resumable)",
    )
    policy.add_argument("--model", required=True, help="Meissonic checkpoint folder to start from")
    policy.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl, export/)")
    policy.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    defaults = _policy_defaults()
    for name, kind, help in (
        ("updates", int, "policy updates in all"),
        ("prompts_per_update", int, "training-split prompts per update"),
        ("samples_per_prompt", int, "images drawn per prompt (>= 2; rewards are compared within a prompt)"),
        ("steps_per_update", int, "decoding steps back-propagated through per update, chosen at random"),
        ("step_fraction", float, "choose them among this first fraction of the steps"),
        ("lr", float, "AdamW learning rate"),
        ("kl_beta", float, "weight of the KL penalty towards the starting weights"),
        ("max_grad_norm", float, "gradient norm clip"),
        ("seed", int, "seed of the prompt list, the samples and the chosen steps"),
        ("save_every", int, "updates between checkpoints"),
    ):
        policy.add_argument("--" + name.replace("_", "-"), type=kind, default=defaults[name],
                            help=f"{help} (default {defaults[name]})")


def _policy_defaults() -> dict:
    import dataclasses

    from meissonic.training.policy_gradient import PolicySettings

    return {f.name: f.default for f in dataclasses.fields(PolicySettings)}


def _scene_weights(text: str) -> dict[str, float]:
    from meissonic.world.dataset import check_scene_weights

    weights = {}
    for item in text.split(","):
        name, _, value = item.partition("=")  # no "=": value "" and float() refuses it
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected TYPE=WEIGHT items separated by commas, got {item!r}") from None
    try:
        check_scene_weights(weights)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return weights


def _sampling_parser(actions, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand that samples training-split prompts with a model and writes preencoded rows."""
    parser = actions.add_parser(name, help=help)
    parser.add_argument("--model", required=True, help="Meissonic checkpoint folder to sample with")
    parser.add_argument("--out", required=True, help="preencoded folder to write (must not exist)")
    parser.add_argument("--num-prompts", type=int, required=True, help="training-split prompts to sample")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt list and of sampling")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampling call")
    return parser


def run(args: argparse.Namespace) -> int:
    from meissonic.world import heldout_tasks, training_tasks, write_dataset

    if args.action == "render":

        def progress(done: int, total: int) -> None:
            if done % 500 == 0 or done == total:
                print(f"{done}/{total}", file=sys.stderr, flush=True)

        path = write_dataset(
            args.out,
            args.num,
            seed=args.seed,
            size=args.size,
            num_captions=args.num_captions,
            progress=progress,
            scene_weights=args.scene_weights,
            shuffle_pairs=args.shuffle_pairs,
        )
        print(f"wrote {args.num} images and {path}")
        return 0
    if args.action in ("self-samples", "preference-pairs"):
        return _self_samples(args)
    if args.action == "reinforce":
        return _reinforce(args)
    if args.action == "tokenizer":
        from meissonic.world.tokenizer import write_world_tokenizer

        print(write_world_tokenizer(args.out))
        return 0
    tasks = (heldout_tasks if args.split == "heldout" else training_tasks)(args.num, args.seed)
    for task in tasks:
        print(json.dumps(task.to_dict()) if args.json else task.text)
    return 0


def _self_samples(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from diffusers import VQModel

    from meissonic import MeissonicPipeline
    from meissonic.training.self_samples import write_preference_pairs, write_self_samples

    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; choose a new folder", file=sys.stderr)
        return 2
    least = 2 if args.action == "preference-pairs" else 1
    for flag, value, minimum in (("--num-prompts", args.num_prompts, 1), ("--batch-size", args.batch_size, 1),
                                 ("--samples-per-prompt", args.samples_per_prompt, least)):
        if value < minimum:
            print(f"error: {flag} must be >= {minimum}, got {value}", file=sys.stderr)
            return 2
    pipe = MeissonicPipeline.from_pretrained(args.model, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    what = "pairs" if args.action == "preference-pairs" else "kept"

    def progress(done: int, total: int, kept: int) -> None:
        print(f"{done}/{total} prompts, {kept} {what}", file=sys.stderr, flush=True)

    if args.action == "preference-pairs":
        index = write_preference_pairs(pipe, out, args.num_prompts, args.seed, args.samples_per_prompt,
                                       args.batch_size, progress)
        print(json.dumps(index["preference_pairs"]))
    else:
        vqvae = VQModel.from_pretrained(str(Path(args.model) / "vqvae"), torch_dtype=torch.float32).eval()
        index = write_self_samples(pipe, vqvae, out, args.num_prompts, args.seed, args.render_seed,
                                   args.batch_size, progress, args.samples_per_prompt)
        print(json.dumps(index["self_samples"]))
    print(f"wrote {index['count']} rows to {out}")
    return 0


def _reinforce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meissonic.training.policy_gradient import PolicySettings, PolicyTrainer

    out = Path(args.out)
    if out.exists() and not args.resume:
        print(f"error: {out} exists; pass --resume to continue it or choose a new folder", file=sys.stderr)
        return 2
    if args.resume and not out.exists():
        print(f"error: {out} does not exist; nothing to resume", file=sys.stderr)
        return 2
    try:
        settings = PolicySettings(**{name: getattr(args, name) for name in _policy_defaults()})
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def progress(row: dict) -> None:
        print(json.dumps({k: v for k, v in row.items() if k != "task_types"}), file=sys.stderr, flush=True)

    export = PolicyTrainer(args.model, out, settings, resume=args.resume).run(progress)
    print(f"exported {export}")
    return 0
