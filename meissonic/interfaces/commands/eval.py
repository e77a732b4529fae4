"""`meissonic eval world ...` and `meissonic eval compare ...`: route to the benchmark's own module.

world: score one model on the world benchmark (`eval_world`); compare: paired comparison of sampler
settings on it (`eval_compare`).
"""

from __future__ import annotations

import argparse
import importlib

TARGETS = {
    "world": ("meissonic.interfaces.commands.eval_world", "score a model on the world benchmark"),
    "compare": ("meissonic.interfaces.commands.eval_compare", "paired comparison of sampler settings"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    targets = parser.add_subparsers(dest="benchmark", metavar="TARGET", required=True)
    for name, (module_name, help_text) in TARGETS.items():
        sub = targets.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(sub)
        sub.set_defaults(_eval_module=module_name)
        for action in sub._actions:
            # eval_world declares its own positional `target` ("world"); the sub-command name already says it.
            if action.dest == "target" and not action.option_strings:
                action.nargs, action.default = "?", name


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._eval_module).run(args) or 0)
