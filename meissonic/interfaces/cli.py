"""`meissonic` command line: one subcommand per module, imported only when it is used."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module defining `add_arguments(parser)` and `run(args) -> int | None`, plus a one-line help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("meissonic.interfaces.commands.generate", "generate images from text"),
    "edit": ("meissonic.interfaces.commands.edit", "img2img, inpainting and outpainting"),
    "train": ("meissonic.interfaces.commands.train", "train or fine-tune the transformer from a YAML config"),
    "train-vq": ("meissonic.interfaces.commands.train_vq", "train a VQ tokenizer from a YAML config"),
    "merge-codes": ("meissonic.interfaces.commands.merge_codes",
                    "merge a trained VQ's near-duplicate codes into fewer codes"),
    "preencode": ("meissonic.interfaces.commands.preencode", "encode a dataset to token/text shards once"),
    "eval": ("meissonic.interfaces.commands.eval", "evaluate: world benchmark, or compare two sampler settings"),
    "world": ("meissonic.interfaces.commands.world", "render the synthetic world: datasets and prompts"),
    "ui": ("meissonic.interfaces.commands.ui", "web UI for generation and editing (Gradio, on 127.0.0.1)"),
    "serve": ("meissonic.interfaces.commands.serve", "OpenAI-images-compatible HTTP API (FastAPI + uvicorn)"),
    "tiny-checkpoint": ("meissonic.interfaces.commands.tiny_checkpoint",
                        "write a tiny random checkpoint in the released layout"),
}


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported to declare its arguments."""
    parser = argparse.ArgumentParser(prog="meissonic", description="Meissonic masked generative transformers.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as error:
        print(f"meissonic {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"meissonic {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
