"""`meissonic ui`: the Gradio web UI on this machine (http://127.0.0.1:7860 by default)."""

from __future__ import annotations

import argparse

from .common import add_enhance_arguments, add_model_arguments, apply_model_options, load_pipeline, sampler_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: reachable from this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--max-images", type=int, default=4, help="most images per click (default 4)")
    parser.add_argument("--max-size", type=int, default=None,
                        help="largest image side offered by the size sliders (default: twice the model's resolution)")
    add_model_arguments(parser)
    add_memory_and_sampler_arguments(parser)


def add_memory_and_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The enhanced-inference flags: quantization, and sampler settings used as the controls' defaults."""
    add_enhance_arguments(parser)


def load_for_interface(args: argparse.Namespace):
    """The text-to-image pipeline as the model flags say, quantized and compiled if asked, and the sampler
    settings the flags set (field -> value; see `sampler_settings`), to lay over the checkpoint's own sampler."""
    from ...pipelines import MeissonicPipeline

    pipe = load_pipeline(args, MeissonicPipeline)
    apply_model_options(pipe, args)
    if args.compile:  # compile one image's shapes (guided and unguided steps) before the first request
        print("compiling the transformer for one-image requests (seconds to a minute)...", flush=True)
        pipe("warm-up", output_type="tokens")
    return pipe, sampler_settings(args)


def build(args: argparse.Namespace):
    """Load the model named by the flags and build the Gradio app."""
    from ..ui import build_ui

    if args.max_images < 1:
        raise ValueError("--max-images must be >= 1")
    pipe, defaults = load_for_interface(args)
    return build_ui(pipe, max_images=args.max_images, max_size=args.max_size, sampler_defaults=defaults)


def run(args: argparse.Namespace) -> int:
    from ..ui import launch

    demo = build(args)
    print(f"meissonic ui: serving on http://{args.host}:{args.port} (Ctrl+C to stop)")
    launch(demo, host=args.host, port=args.port, block=True)
    return 0
