"""`meissonic world`: write a training dataset of world renders, or print sample prompts.

meissonic world render --out DIR --num 20000 --seed 0
meissonic world sample --num 8 --split heldout
meissonic world tokenizer --out DIR
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
    sample = actions.add_parser("sample", help="print prompts (training scenes or held-out evaluation tasks)")
    sample.add_argument("--num", type=int, default=8)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--split", choices=["train", "heldout"], default="train")
    sample.add_argument("--json", action="store_true", help="print the structured tasks as JSON lines")
    tokenizer = actions.add_parser("tokenizer", help="write a CLIP tokenizer with one token per caption word")
    tokenizer.add_argument("--out", required=True, help="tokenizer folder (vocab.json + merges.txt)")


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
        )
        print(f"wrote {args.num} images and {path}")
        return 0
    if args.action == "tokenizer":
        from meissonic.world.tokenizer import write_world_tokenizer

        print(write_world_tokenizer(args.out))
        return 0
    tasks = (heldout_tasks if args.split == "heldout" else training_tasks)(args.num, args.seed)
    for task in tasks:
        print(json.dumps(task.to_dict()) if args.json else task.text)
    return 0
