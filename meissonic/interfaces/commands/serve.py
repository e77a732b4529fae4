"""`meissonic serve`: the OpenAI-images-compatible HTTP API (FastAPI + uvicorn), on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import add_model_arguments
from .ui import add_memory_and_sampler_arguments, load_for_interface

API_KEY_VARIABLE = "MEISSONIC_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; set --api-key before exposing the server)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' on /v1/ routes "
                        f"(default: the {API_KEY_VARIABLE} environment variable; unset: no authentication)")
    parser.add_argument("--concurrency", type=int, default=1, help="generations run at once (default 1)")
    parser.add_argument("--queue-size", type=int, default=8,
                        help="requests that may wait for a worker; more are answered 429 at once (default 8)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a request may take, queue wait included, before it is answered 503 and its "
                        "work cancelled (default 300)")
    parser.add_argument("--max-images", type=int, default=4, help="largest n per request (default 4)")
    parser.add_argument("--max-size", type=int, default=None,
                        help="largest image side in pixels (default: twice the model's resolution)")
    parser.add_argument("--max-steps", type=int, default=100, help="most decoding steps per request (default 100)")
    parser.add_argument("--max-prompt-length", type=int, default=1000, help="longest prompt in characters")
    add_model_arguments(parser)
    add_memory_and_sampler_arguments(parser)


def settings_from_args(args: argparse.Namespace):
    """ServerSettings from the parsed flags (the API key falls back to the environment)."""
    from ..server import ServerSettings

    for name in ("concurrency", "max_images", "max_steps", "max_prompt_length"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.queue_size < 0 or args.timeout <= 0:
        raise ValueError("--queue-size must be >= 0 and --timeout > 0")
    return ServerSettings(
        api_key=args.api_key or os.environ.get(API_KEY_VARIABLE) or None, max_images=args.max_images,
        max_size=args.max_size, max_steps=args.max_steps, max_prompt_length=args.max_prompt_length,
        model_name=Path(args.model).name if args.model else "meissonic",
    )


def build_app(args: argparse.Namespace):
    """Load the model and build the FastAPI application the flags describe."""
    from ..server import GenerationService, create_app

    settings = settings_from_args(args)
    if args.cpu_offload and args.concurrency > 1:
        raise ValueError("--cpu-offload moves models between devices during a call; use it with --concurrency 1")
    pipe, settings.sampler_defaults = load_for_interface(args)
    service = GenerationService(pipe, concurrency=args.concurrency, queue_size=args.queue_size, timeout=args.timeout)
    return create_app(pipe, settings, service)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    app = build_app(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not app.state.settings.api_key:
        print(f"meissonic serve: warning: listening on {args.host} without an API key")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
