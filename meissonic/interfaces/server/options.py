"""Sampler options shared by the web UI and the HTTP API, read from the pipelines' `__call__` signatures.

The UI builds its advanced controls from `sampler_options(...)` and the API validates its `meissonic` object against
the same list, so a keyword argument added to a pipeline appears in both without changes here: booleans become
toggles, numbers number fields or sliders, `Literal[...]` choices drop-downs. A parameter typed with a dataclass
(the enhanced-inference `sampler: SamplerOptions`) contributes one option per field, gathered back into an
instance of the dataclass (which validates itself) when the pipeline is called.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# Keyword arguments the interfaces set themselves (inputs, size, seed, output plumbing): never generic options.
HANDLED = frozenset({
    "self", "prompt", "image", "mask_image", "negative_prompt", "height", "width", "num_inference_steps",
    "guidance_scale", "num_images_per_prompt", "generator", "strength", "prompt_embeds", "negative_prompt_embeds",
    "output_type", "return_dict", "callback_on_step_end", "micro_conditioning_crop_coord", "original_size",
})

Kind = Literal["bool", "int", "float", "choice", "text", "pair"]


@dataclass(frozen=True)
class SamplerOption:
    """One setting exposed to users. `choices` may contain None, shown as "default". `target` names the pipeline
    parameter whose dataclass (`owner`) holds this setting as a field; None: a keyword argument of its own."""

    name: str
    kind: Kind
    default: Any
    label: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = field(default_factory=tuple)
    info: str = ""
    target: str | None = None
    owner: type | None = None

    def check(self, value: Any) -> Any:
        """The value converted to what the pipeline expects; ValueError naming the option when it is invalid."""
        name = self.name
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{name} must be one of {list(self.choices)}, got {value!r}")
            return value
        if self.kind == "text":
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
            return value
        if self.kind == "pair":
            values = list(value) if isinstance(value, (list, tuple)) else [value, value]
            if len(values) != 2:
                raise ValueError(f"{name} must be a number or a [start, end] pair, got {value!r}")
            return tuple(self._number(v, float) for v in values)
        return self._number(value, int if self.kind == "int" else float)

    def _number(self, value: Any, kind: type) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{self.name} must be finite, got {value!r}")
        if kind is int and value != int(value):
            raise ValueError(f"{self.name} must be an integer, got {value!r}")
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            raise ValueError(f"{self.name} must be in [{self.minimum}, {self.maximum}], got {value!r}")
        return kind(value)


def _known(name: str, kind: Kind, label: str, minimum=None, maximum=None, step=None, choices=(), info=""):
    return SamplerOption(name, kind, None, label, minimum, maximum, step, tuple(choices), info)


# Labels, ranges and choices of settings whose meaning is known; the default always comes from the pipeline.
KNOWN: dict[str, SamplerOption] = {o.name: o for o in (
    _known("temperature", "pair", "Gumbel temperature", 0.0, 10.0, 0.1, info="annealed from start to end"),
    _known("masking_schedule", "choice", "Masking schedule", choices=(None, "cosine", "linear")),
    _known("micro_conditioning_aesthetic_score", "float", "Aesthetic score", 0.0, 10.0, 0.5),
    # enhanced inference (meissonic.sampling.options.SamplerOptions)
    _known("noise_reg", "float", "Noise regularization", 0.0, 10.0, 0.25, info="0: off; published 2"),
    _known("differential", "bool", "Differential sampling"),
    _known("differential_fraction", "float", "Differential fraction", 0.05, 1.0, 0.05),
    _known("zigzag", "bool", "Masked Z-sampling", info="about 3x the model calls"),
    _known("zigzag_guidance", "float", "Z-sampling inversion guidance", 0.0, 20.0, 0.5),
    _known("guidance_schedule", "choice", "Guidance schedule", choices=("constant", "linear", "cosine")),
    _known("guidance_interval", "pair", "Guidance interval", 0.0, 1.0, 0.05,
           info="fractions of the steps with guidance; start < end"),
    _known("guidance_outside", "float", "Guidance outside the interval", 0.0, 1.0, 0.05,
           info="share of the guidance kept outside the interval; 0: conditional only"),
    _known("order", "choice", "Unmasking order", choices=("confidence", "halton")),
    _known("tome_ratio", "float", "Token merging ratio", 0.0, 0.9, 0.05, info="0: off; published 0.25"),
    _known("tome_reuse", "int", "Token merging: blocks per merge plan", 1, 64, 1),
    _known("tome_seed", "int", "Token merging seed", 0, 2**31 - 1, 1),
    _known("token_temperature", "float", "Token temperature", 0.05, 5.0, 0.05,
           info="the guided logits are divided by it before tokens are drawn; 1: the reference sampler"),
    _known("late_token_temperature", "float", "Late token temperature", 0.05, 5.0, 0.05,
           info="divides the logits of the steps past the middle of the mask schedule as well; 1: off"),
    _known("early_steps", "float", "Early steps", 0.05, 0.95, 0.05,
           info="fraction of the steps spent on the first half of the mask schedule; 0.5: the plain schedule"),
    _known("preset", "choice", "Sampler preset", info="the starting point; the fields below override it"),
)}


def _parameters(pipeline: Any) -> dict[str, inspect.Parameter]:
    call = pipeline.__call__ if isinstance(pipeline, type) else type(pipeline).__call__
    try:
        return dict(inspect.signature(call, eval_str=True).parameters)
    except Exception:  # an annotation that cannot be evaluated: fall back to the defaults' types
        return dict(inspect.signature(call).parameters)


def _union_members(annotation: Any) -> list:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _kind_of(annotation: Any, default: Any) -> tuple[Kind | None, tuple]:
    """The option kind for an annotation (or, failing that, the default's type), and its choices."""
    members = _union_members(annotation)
    annotation = members[0] if len(members) == 1 else annotation
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "choice", typing.get_args(annotation)
    if annotation is bool or isinstance(default, bool):
        return "bool", ()
    if annotation is int or type(default) is int:
        return "int", ()
    if annotation is float or isinstance(default, float):
        return "float", ()
    if annotation is str or isinstance(default, str):
        return "text", ()
    if origin is tuple and len(typing.get_args(annotation)) == 2 or isinstance(default, tuple) and len(default) == 2:
        return "pair", ()
    return None, ()


def _option(name: str, annotation: Any, default: Any, target: str | None = None, owner: type | None = None):
    """The option for one parameter or field, or None when its type has no control."""
    known = KNOWN.get(name)
    if known is not None:
        choices = tuple(c for c in known.choices if c is not None or default is None)
        if choices and default not in choices:
            choices = (default, *choices)
        return dataclasses.replace(known, default=default, choices=choices, target=target, owner=owner)
    kind, choices = _kind_of(annotation, default)
    if kind is None:
        return None
    if kind == "choice" and default not in choices:
        choices = (default, *choices)
    return SamplerOption(name, kind, default, name.replace("_", " ").capitalize(), choices=choices, target=target,
                         owner=owner)


def _dataclass_options(target: str, owner: type) -> list[SamplerOption]:
    """One option per field of `owner`, plus a preset choice when its module lists PRESETS."""
    try:
        hints = typing.get_type_hints(owner)
    except Exception:
        hints = {}
    options = []
    presets = getattr(sys.modules.get(owner.__module__), "PRESETS", None)
    if presets and hasattr(owner, "from_dict"):
        options.append(dataclasses.replace(KNOWN["preset"], default=presets[0], choices=tuple(presets),
                                           target=target, owner=owner))
    for item in dataclasses.fields(owner):
        default = item.default if item.default is not dataclasses.MISSING else None
        option = _option(item.name, hints.get(item.name, item.type), default, target, owner)
        if option is not None:
            options.append(option)
    return options


def sampler_options(pipeline: Any) -> list[SamplerOption]:
    """Advanced options of a pipeline (instance or class): every keyword argument with a plain type (bool, int,
    float, str, Literal, a pair) that the interfaces do not set themselves, and the fields of dataclass-typed ones."""
    options = []
    for name, parameter in _parameters(pipeline).items():
        if name in HANDLED or parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            continue
        owners = [m for m in _union_members(parameter.annotation) if dataclasses.is_dataclass(m)]
        if owners:
            options.extend(_dataclass_options(name, owners[0]))
            continue
        if parameter.default is inspect.Parameter.empty:
            continue
        option = _option(name, parameter.annotation, parameter.default)
        if option is not None:
            options.append(option)
    return options


def with_defaults(options: list[SamplerOption], defaults: dict[str, Any]) -> list[SamplerOption]:
    """`options` with the defaults (option name -> value) of those named in `defaults` replaced."""
    return [dataclasses.replace(o, default=defaults[o.name]) if o.name in defaults else o for o in options]


def model_sampler_defaults(pipeline: Any, task: str) -> dict[str, Any]:
    """The sampler settings a checkpoint stores (`default_sampler`) for one of the pipelines ("text2image",
    "img2img", "inpaint"), as option name -> value: those that differ from vanilla decoding. Only text-to-image
    uses them (none for released checkpoints and for the editing pipelines)."""
    if task != "text2image":
        return {}
    chosen = pipeline.default_sampler_options
    return {name: getattr(chosen, name) for name in chosen.changes()}


def check_settings(options: list[SamplerOption], settings: dict[str, Any]) -> dict[str, Any]:
    """Validate user settings (name -> value) against `options`; returns pipeline keyword arguments.

    Settings of a dataclass parameter become one instance (built with its `from_dict` when it has one, so that a
    preset is the starting point); its own validation errors are raised as ValueError. Unknown names raise
    ValueError listing the accepted ones."""
    by_name = {option.name: option for option in options}
    unknown = sorted(set(settings) - set(by_name))
    if unknown:
        raise ValueError(f"unknown sampler option(s) {unknown}; this model accepts {sorted(by_name)}")
    kwargs: dict[str, Any] = {}
    groups: dict[str, tuple[type, dict[str, Any]]] = {}
    for name, value in settings.items():
        option = by_name[name]
        value = option.check(value)
        if option.target is None:
            kwargs[name] = value
        else:
            groups.setdefault(option.target, (option.owner, {}))[1][name] = value
    for target, (owner, values) in groups.items():
        try:
            kwargs[target] = owner.from_dict(values) if hasattr(owner, "from_dict") else owner(**values)
        except TypeError as error:
            raise ValueError(str(error)) from None
    return kwargs
