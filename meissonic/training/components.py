"""Building and loading the models a run needs, LoRA, stage chaining and the released-layout export."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..models import MeissonicTransformer2DModel
from ..models.layers import Modulation
from .config import LoRAConfig, ModelConfig
from .tiny import load_tokenizer as _load_clip_tokenizer
from .tiny import tiny_text_encoder, tiny_vq_config, write_tiny_tokenizer

COMPRESSION_PREFIXES = ("down_block.", "up_block.")


def _folder(spec: str | None, pretrained: str | None, sub: str, what: str) -> Path:
    if spec is None:
        if pretrained is None:
            raise ValueError(
                f"model.{what} is not set and there is no model.pretrained folder to take it from"
            )
        path = Path(pretrained) / sub
    else:
        path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"model.{what}: folder {path} does not exist")
    return path


def load_tokenizer(config: ModelConfig, cache_dir: Path):
    if config.tokenizer == "tiny":
        return _load_clip_tokenizer(write_tiny_tokenizer(cache_dir / "tiny_tokenizer"))
    return _load_clip_tokenizer(_folder(config.tokenizer, config.pretrained, "tokenizer", "tokenizer"))


def load_text_encoder(config: ModelConfig, tokenizer, seed: int = 0):
    from transformers import CLIPTextModelWithProjection

    if isinstance(config.text_encoder, dict):
        return tiny_text_encoder(tokenizer, seed=seed, **config.text_encoder)
    path = _folder(config.text_encoder, config.pretrained, "text_encoder", "text_encoder")
    return CLIPTextModelWithProjection.from_pretrained(str(path), use_safetensors=True).eval()


def load_vqvae(spec: str | dict | None, pretrained: str | None = None, seed: int = 0):
    from diffusers import VQModel

    if isinstance(spec, dict):
        torch.manual_seed(seed)
        return VQModel(**tiny_vq_config(**spec))
    path = _folder(spec, pretrained, "vqvae", "vqvae")
    if (path / "vqvae").is_dir():  # a train-vq export or a pipeline folder
        path = path / "vqvae"
    return VQModel.from_pretrained(str(path), use_safetensors=True).eval()


def _transformer_folder(path: Path) -> Path:
    return path / "transformer" if (path / "transformer" / "config.json").is_file() else path


def load_transformer(config: ModelConfig, seed: int = 0) -> MeissonicTransformer2DModel:
    if isinstance(config.transformer, dict):
        settings = dict(config.transformer)
        settings.setdefault("timestep_convention", config.timestep_convention or "mask_ratio")
        torch.manual_seed(seed)
        try:
            return MeissonicTransformer2DModel(**settings)
        except TypeError as error:
            raise ValueError(f"model.transformer: {error}") from None
    path = _transformer_folder(_folder(config.transformer, config.pretrained, "transformer", "transformer"))
    model = MeissonicTransformer2DModel.from_pretrained(str(path), use_safetensors=True)
    if config.timestep_convention and config.timestep_convention != model.config.timestep_convention:
        model.register_to_config(timestep_convention=config.timestep_convention)
    return model


def read_transformer_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a transformer from a run checkpoint, a transformer folder or a pipeline folder."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model.init_from: {path} does not exist")
    for candidate in (
        path / "model.safetensors",
        _transformer_folder(path) / "diffusion_pytorch_model.safetensors",
        path,
    ):
        if candidate.is_file():
            state = load_file(str(candidate))
            if any(".base_layer." in k or "lora_" in k for k in state):
                raise ValueError(f"model.init_from: {candidate} holds LoRA weights; export the run first")
            return state
    raise FileNotFoundError(f"model.init_from: no transformer weights in {path}")


def load_chained(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Stage chaining: load `state` into `model`. Only feature-compression keys (`down_block.*`, `up_block.*`)
    and whole blocks appended after the last block of `state` may be missing from it; every other key must match
    exactly. Compression layers keep their fresh initialisation; appended blocks start as the identity (their
    adaLN gates are zero, as in adaLN-Zero), so the grown model computes what the smaller one did.
    Returns the new keys."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(
            f"model.init_from: {len(unexpected)} weights the model does not have, e.g. {unexpected[0]}"
        )
    appended = _appended_blocks(model, state)
    may_be_missing = COMPRESSION_PREFIXES + tuple(f"{prefix}." for prefix in appended)
    missing = sorted(set(own) - set(state))
    wrong = [k for k in missing if not k.startswith(may_be_missing)]
    if wrong:
        raise ValueError(
            f"model.init_from: {len(wrong)} weights missing that are not compression layers or appended blocks, "
            f"e.g. {wrong[0]}"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(
                f"model.init_from: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
    for prefix in appended:
        zero_gates(model.get_submodule(prefix))
    return missing


def _appended_blocks(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Prefixes ("single_transformer_blocks.7") of the model's blocks after the last block present in `state`
    (none if `state` has no block of that stack: a stack is grown, not made from nothing)."""
    prefixes = []
    for stack in ("transformer_blocks", "single_transformer_blocks"):
        present = {int(k.split(".")[1]) for k in state if k.startswith(stack + ".")}
        if present:
            prefixes += [f"{stack}.{i}" for i in range(max(present) + 1, len(getattr(model, stack)))]
    return prefixes


@torch.no_grad()
def zero_gates(block: nn.Module) -> None:
    """Make a transformer block the identity: zero the weights and biases of the gate chunks of its adaLN
    modulations (chunk 3 of 3 for single-stream blocks; chunks 3 and 6 of 6 for dual-stream blocks)."""
    for modulation in (m for m in block.modules() if isinstance(m, Modulation)):
        dim = modulation.linear.out_features // modulation.chunks
        for chunk in range(2, modulation.chunks, 3):
            modulation.linear.weight[chunk * dim:(chunk + 1) * dim].zero_()
            modulation.linear.bias[chunk * dim:(chunk + 1) * dim].zero_()


def add_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Freeze `model` and inject trainable LoRA adapters (peft) into the modules named by `target_modules`."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ValueError("lora.enabled needs peft: pip install 'meissonic[train]'") from None
    model.requires_grad_(False)
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
    )
    try:
        return inject_adapter_in_model(lora, model)
    except ValueError as error:
        raise ValueError(f"lora.target_modules: {error}") from None


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with LoRA adapters merged into the base weights and removed (a plain model)."""
    model = copy.deepcopy(model)
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def pretrained_sampling_defaults(pretrained: str) -> dict:
    """`default_steps` / `default_guidance_scale` / `default_sampler` / `prompt_rewrites` stored in a pretrained
    folder's model_index.json (those present; none when the folder has no model_index.json)."""
    from ..pipelines.base import TEXT2IMAGE_SETTINGS
    from ..pipelines.loading import read_model_index

    folder = Path(pretrained)
    if not (folder / "model_index.json").is_file():
        return {}
    entries = read_model_index(folder)
    return {k: entries[k] for k in (*TEXT2IMAGE_SETTINGS, "prompt_rewrites") if entries.get(k) is not None}


def export_pipeline(
    folder: str | Path,
    transformer,
    vqvae,
    text_encoder,
    tokenizer,
    default_resolution: int | None = None,
    default_steps: int | None = None,
    default_guidance_scale: float | None = None,
    default_sampler: str | dict | None = None,
    prompt_rewrites: list | None = None,
) -> Path:
    """Write a released-layout folder (SPEC section 1) atomically through `MeissonicPipeline.save_pretrained`;
    `default_resolution` (the training resolution) becomes the pipeline's default image side, and the sampling
    defaults the text-to-image defaults stored in model_index.json (None: the released 48 steps, guidance 9,
    vanilla decoding); `prompt_rewrites` as the pipeline takes them (a fine-tune keeps its base model's)."""
    from ..pipelines import MeissonicPipeline
    from ..sampling import MeissonicScheduler

    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    MeissonicPipeline(
        transformer=transformer,
        vqvae=vqvae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=MeissonicScheduler(mask_token_id=transformer.mask_token_id),
        default_resolution=default_resolution,
        default_steps=default_steps,
        default_guidance_scale=default_guidance_scale,
        default_sampler=default_sampler,
        prompt_rewrites=prompt_rewrites,
    ).save_pretrained(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
