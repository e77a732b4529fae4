"""Training configuration: YAML files parsed into dataclasses; an unknown key is an error naming key and
file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    """Where each component comes from. A string is a folder; a mapping builds a fresh component from
    that config.

    `pretrained` is a released-layout folder used for every component not given explicitly. `init_from` loads
    transformer weights non-strictly for stage chaining: only the feature-compression keys may be missing.
    """

    pretrained: str | None = None
    transformer: str | dict | None = None
    init_from: str | None = None
    vqvae: str | dict | None = None
    text_encoder: str | dict | None = None
    tokenizer: str | None = None  # folder, or "tiny" for the built-in character-level CLIP tokenizer
    timestep_convention: str | None = None  # for a transformer built from a config; default "mask_ratio"


@dataclass
class DataConfig:
    path: str = ""
    format: str = "auto"  # auto | imagefolder | parquet | webdataset | hf | preencoded
    resolution: int = 256
    random_crop: bool = True
    caption_column: str = "text"
    image_column: str = "image"
    score_column: str = "score"
    default_score: float = 6.0
    shuffle: str = "auto"  # auto | full | block (block: shuffle shards/row groups, then within a window)
    shuffle_window: int = 4
    num_workers: int = 0
    hf_split: str = "train"


@dataclass
class ObjectiveConfig:
    """The masked-token objective, or, with `preference_beta` > 0, the preference objective on rows that carry a
    `rejected_tokens` grid beside `tokens` (`meissonic world preference-pairs`): DPO on the masked-token
    log-likelihoods of the two grids under the same mask, against a frozen copy of the starting transformer,
    plus `preference_sft_weight` times the masked-token loss of the chosen grids. CFG-dropped pairs (empty
    prompt) train only through that second term. With `distill_guidance`, guidance distillation (below); a
    CFG-dropped row then learns the frozen copy's unconditional distribution."""

    cfg_dropout: float = 0.1
    train_text_encoder: bool = False
    min_masked: int = 1
    min_mask_ratio: float = 0.0  # > 0: train only on mask ratios >= this (layout-deciding steps)
    full_mask_fraction: float = 0.0  # > 0: this fraction of rows fully masked, the rest as above
    preference_beta: float = 0.0  # 0: plain masked-token training
    preference_sft_weight: float = 0.0
    # Guidance distillation: [[ratio, scale], ...], ratios decreasing to 0. Non-empty: the model learns, at every
    # masked position, the distribution of a frozen copy of the starting weights under classifier-free guidance
    # at the scale of the first pair whose ratio the input's mask ratio exceeds; sampling at guidance 1 then
    # needs one branch instead of two. Rows of a preencoded folder with `token_targets` = 1 (and not CFG-dropped)
    # learn their own tokens instead; [[0.0, 1.0]] thus teaches those rows while holding the rest to the model's
    # own distribution.
    distill_guidance: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | adamw8bit (falls back to adamw without bitsandbytes)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 10.0
    text_encoder_lr: float | None = None


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.9999
    start_step: int = 0


@dataclass
class LoRAConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v"])


@dataclass
class CheckpointConfig:
    every: int = 1000
    keep_last: int = 3


@dataclass
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    progress: bool = True


@dataclass
class ValidationConfig:
    """Sample grids during training. Steps, guidance and sampler are also the export's sampling defaults, unless
    the run fine-tunes a `model.pretrained` checkpoint (which keeps its own)."""

    every: int = 0  # 0: never
    prompts: list[str] = field(default_factory=lambda: ["a photo of a cat"])
    num_inference_steps: int = 16
    guidance_scale: float = 4.0
    sampler: str = "vanilla"  # SamplerOptions spec, e.g. "guidance_interval=0:0.5"
    resolution: int | None = None  # default: data.resolution


@dataclass
class TrainConfig:
    run_dir: str = "runs/train"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    mixed_precision: str = "bf16"  # bf16 | no
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the transformer in place (same weights and state-dict keys)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class VQLossConfig:
    l1: float = 1.0
    l2: float = 1.0
    codebook: float = 1.0
    commitment: float = 0.25
    discriminator: float = 0.0  # 0: no patch discriminator
    discriminator_start: int = 0
    discriminator_channels: int = 64
    discriminator_layers: int = 3


@dataclass
class VQTrainConfig:
    run_dir: str = "runs/vq"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    mixed_precision: str = "bf16"
    vqvae: str | dict = field(
        default_factory=dict
    )  # folder to fine-tune, or a VQModel config to start from scratch
    data: DataConfig = field(default_factory=DataConfig)
    val_images: int = 16  # held out from the end of the dataset (or all of `val_path`)
    val_path: str | None = None
    eval_every: int = 500
    loss: VQLossConfig = field(default_factory=VQLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, grad_clip=1.0))
    dead_code_every: int = 100  # restart codes unused for this many steps (0: never)
    # Fine-tune only post_quant_conv + decoder of an existing VQ: encoder and codebook stay fixed, so the token
    # ids of a transformer trained on that VQ stay valid (no dead-code restarts in this mode).
    decoder_only: bool = False
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Settings that may change between a run and its resumption without changing what is trained.
_RESUMABLE = {"max_steps", "checkpoint", "log", "validation", "run_dir", "eval_every", "compile"}
_RESUMABLE_DATA = {"num_workers"}


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        joined = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007 - built at runtime
        return joined, True
    return tp, False


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: '{where}' must not be null")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, where, source)
            except ValueError:
                continue
        raise ValueError(f"{source}: '{where}' has an invalid value {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{source}: '{where}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: '{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{source}: '{where}' must be a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{source}: '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: '{where}' must be a list, got {value!r}")
        inner = typing.get_args(tp)
        items = [
            _convert(v, inner[0] if inner else Any, f"{where}[{i}]", source) for i, v in enumerate(value)
        ]
        if origin is tuple and inner and inner[-1] is not Ellipsis and len(items) != len(inner):
            raise ValueError(f"{source}: '{where}' must have {len(inner)} items, got {len(items)}")
        return tuple(items) if origin is tuple else items
    return value


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: '{where or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ValueError(f"{source}: unknown key '{path}'")
        kwargs[key] = _convert(value, hints[key], path, source)
    return cls(**kwargs)


def load_config(path: str | Path, cls: type = TrainConfig, overrides: dict | None = None) -> Any:
    """Read a YAML file into `cls`; `overrides` (dotted keys) are applied on top. Raises
    ValueError/FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    config = _build(cls, data, "", str(path))
    validate(config, str(path))
    return config


def validate(config: Any, source: str = "config") -> None:
    """Value checks that need no files: ranges and choices."""
    if config.mixed_precision not in ("bf16", "no"):
        raise ValueError(
            f"{source}: mixed_precision must be 'bf16' or 'no' (fp16 is not supported), "
            f"got {config.mixed_precision!r}"
        )
    for name in ("max_steps", "batch_size", "grad_accum"):
        if getattr(config, name) < 1:
            raise ValueError(f"{source}: {name} must be at least 1")
    if config.data.resolution < 8:
        raise ValueError(f"{source}: data.resolution {config.data.resolution} is too small")
    if config.data.format not in ("auto", "imagefolder", "parquet", "webdataset", "hf", "preencoded"):
        raise ValueError(f"{source}: unknown data.format {config.data.format!r}")
    if config.optim.schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"{source}: optim.schedule must be constant, cosine or linear")
    if config.optim.optimizer not in ("adamw", "adamw8bit"):
        raise ValueError(f"{source}: optim.optimizer must be adamw or adamw8bit")
    if isinstance(config, TrainConfig):
        from ..sampling.options import SamplerOptions

        objective = config.objective
        if not 0.0 <= objective.cfg_dropout <= 1.0:
            raise ValueError(f"{source}: objective.cfg_dropout must be in [0, 1]")
        if not 0.0 <= objective.min_mask_ratio < 1.0:
            raise ValueError(f"{source}: objective.min_mask_ratio must be in [0, 1), got {objective.min_mask_ratio}")
        if not 0.0 <= objective.full_mask_fraction <= 1.0:
            raise ValueError(
                f"{source}: objective.full_mask_fraction must be in [0, 1], got {objective.full_mask_fraction}")
        for name in ("preference_beta", "preference_sft_weight"):
            if getattr(objective, name) < 0:
                raise ValueError(f"{source}: objective.{name} must be >= 0, got {getattr(objective, name)}")
        if objective.distill_guidance:
            pairs = objective.distill_guidance
            ratios = [ratio for ratio, _ in pairs]
            if any(not 0.0 <= r < 1.0 for r in ratios) or ratios[-1] != 0.0 \
                    or any(a <= b for a, b in zip(ratios, ratios[1:], strict=False)):
                raise ValueError(f"{source}: objective.distill_guidance ratios must be in [0, 1), strictly "
                                 f"decreasing and end at 0, got {ratios}")
            if any(not math.isfinite(scale) or scale < 0 for _, scale in pairs):
                raise ValueError(f"{source}: objective.distill_guidance scales must be finite and >= 0, got "
                                 f"{[scale for _, scale in pairs]}")
            if objective.preference_beta > 0 or objective.train_text_encoder:
                raise ValueError(f"{source}: objective.distill_guidance needs plain masked-token training with a "
                                 "frozen text encoder (preference_beta 0, train_text_encoder false)")
        if objective.preference_beta > 0 and objective.train_text_encoder:
            raise ValueError(f"{source}: preference training (objective.preference_beta > 0) needs a frozen "
                             "text encoder (objective.train_text_encoder: false)")

        try:
            SamplerOptions.parse(config.validation.sampler)
        except ValueError as error:
            raise ValueError(f"{source}: validation.sampler: {error}") from None


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def fingerprint(config: Any) -> str:
    """Hash of everything that defines what a run trains; resuming requires the same fingerprint."""
    data = to_dict(config)
    for key in _RESUMABLE:
        data.pop(key, None)
    for key in _RESUMABLE_DATA:
        data.get("data", {}).pop(key, None)
    if not data.get("objective", {}).get("distill_guidance", True):  # added later: runs without it keep their hash
        del data["objective"]["distill_guidance"]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_config(config: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(config))), sort_keys=False))
