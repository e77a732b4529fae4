"""What the Meissonic pipelines share: loading, prompt encoding, the decoding loop and VQ conversion.

The three pipelines differ only in their start state (all masked, a partly masked image, a masked region).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..models.text import encode_prompts
from ..models.transformer import MeissonicTransformer2DModel
from ..sampling.scheduler import Generators, MeissonicScheduler
from .images import numpy_to_pil, tensor_to_numpy
from .loading import load_components

OUTPUT_TYPES = ("pil", "np", "pt", "tokens", "latent")
MAX_SIDE = 4096
StepCallback = Callable[["MeissonicPipelineBase", int, int, dict], dict | None]


@dataclass
class MeissonicPipelineOutput(BaseOutput):
    """images: list of PIL images, a (B, H, W, 3) numpy array, a (B, 3, H, W) tensor, or token grids (B, h, w)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class MeissonicPipelineBase(DiffusionPipeline):
    """Components: transformer, vqvae (diffusers VQModel), text_encoder (CLIPTextModelWithProjection), tokenizer
    (CLIPTokenizer), scheduler (MeissonicScheduler). `default_resolution` is the side used when no size is given."""

    model_cpu_offload_seq = "text_encoder->transformer->vqvae"

    def __init__(
        self,
        transformer: MeissonicTransformer2DModel,
        vqvae,
        text_encoder,
        tokenizer,
        scheduler: MeissonicScheduler,
        default_resolution: int | None = None,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer, vqvae=vqvae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        if default_resolution is None:  # released checkpoints: 1024 px with feature compression, 512 px without
            default_resolution = 1024 if transformer.config.downsample else 512
        self.register_to_config(default_resolution=int(default_resolution))

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, torch_dtype: torch.dtype | None = None, variant: str | None = None, **kwargs
    ) -> MeissonicPipelineBase:
        """Load a local folder in the released layout (or one written by `save_pretrained`).

        `torch_dtype` applies to the transformer and the text encoder (the VQ model stays float32 unless bfloat16
        is asked for); `variant` picks e.g. `diffusion_pytorch_model.fp16.safetensors`. Components given as
        keyword arguments replace the stored ones.
        """
        components, extras = load_components(folder, torch_dtype=torch_dtype, variant=variant)
        unknown = set(kwargs) - set(components) - {"default_resolution"}
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}")
        settings = {"default_resolution": extras.get("default_resolution")}
        settings.update(kwargs)
        components.update({k: v for k, v in settings.items() if k in components})
        return cls(**components, default_resolution=settings["default_resolution"])

    @classmethod
    def from_pipe(cls, pipeline: MeissonicPipelineBase) -> MeissonicPipelineBase:
        """Another task's pipeline sharing the same components (no copy)."""
        return cls(**pipeline.components, default_resolution=pipeline.config.default_resolution)

    # ----- geometry -----------------------------------------------------------------------------------------------
    @property
    def vq_scale(self) -> int:
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this many pixels."""
        return self.vq_scale * self.transformer.token_stride

    def check_size(self, height: int, width: int) -> None:
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not self.stride <= value <= MAX_SIDE:
                raise ValueError(f"{name} {value} is out of range [{self.stride}, {MAX_SIDE}]")
            if value % self.stride:
                raise ValueError(f"{name} {value} is not a multiple of {self.stride} (the model's pixel stride)")

    # ----- text ---------------------------------------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (text states (B, L, D), pooled (B, P)) on the execution device."""
        states, pooled = encode_prompts(self.tokenizer, self.text_encoder, prompts)
        return states, pooled

    def conditioning(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        num_images_per_prompt: int,
        guidance: bool,
        prompt_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        negative_prompt_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Text states and pooled vectors for the model batch ([uncond; cond] when guided) and the image count."""
        if prompt_embeds is None:
            prompts = normalize_prompts(prompt)
            states, pooled = self.encode_prompt(prompts)
        else:
            if prompt is not None:
                raise ValueError("pass either prompt or prompt_embeds, not both")
            states, pooled = prompt_embeds
        batch = states.shape[0]
        states = states.repeat_interleave(num_images_per_prompt, 0)
        pooled = pooled.repeat_interleave(num_images_per_prompt, 0)
        if guidance:
            if negative_prompt_embeds is None:
                negatives = normalize_negative(negative_prompt, batch)
                neg_states, neg_pooled = self.encode_prompt(negatives)
            else:
                neg_states, neg_pooled = negative_prompt_embeds
                if neg_states.shape[0] == 1:
                    neg_states, neg_pooled = neg_states.expand(batch, -1, -1), neg_pooled.expand(batch, -1)
            neg_states = neg_states.repeat_interleave(num_images_per_prompt, 0)
            neg_pooled = neg_pooled.repeat_interleave(num_images_per_prompt, 0)
            states, pooled = torch.cat([neg_states, states]), torch.cat([neg_pooled, pooled])
        return states, pooled, batch * num_images_per_prompt

    # ----- VQ -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> VQ token grids (B, H/s, W/s)."""
        vq = self.vqvae
        param = next(vq.parameters())
        latents = vq.encode(images.to(param.device, param.dtype)).latents
        indices = vq.quantize(latents)[2][2]
        return indices.reshape(images.shape[0], latents.shape[-2], latents.shape[-1])

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grids (B, h, w) -> images (B, 3, h*s, w*s) float32 in [0, 1]."""
        vq = self.vqvae
        batch, height, width = tokens.shape
        channels = vq.config.vq_embed_dim or vq.config.latent_channels
        quant = vq.quantize.get_codebook_entry(tokens.reshape(-1), (batch, height, width, channels))
        images = vq.decoder(vq.post_quant_conv(quant), quant if vq.config.norm_type == "spatial" else None)
        return images.float().clamp(0, 1)

    def to_output(self, tokens: torch.Tensor, output_type: str) -> MeissonicPipelineOutput:
        if output_type in ("tokens", "latent"):
            return MeissonicPipelineOutput(images=tokens)
        images = self.decode_tokens(tokens)
        if output_type == "pt":
            return MeissonicPipelineOutput(images=images)
        array = tensor_to_numpy(images)
        return MeissonicPipelineOutput(images=array if output_type == "np" else numpy_to_pil(array))

    # ----- decoding loop ------------------------------------------------------------------------------------------
    def micro_conditions(
        self, batch: int, height: int, width: int, original_size: tuple[int, int] | None,
        crop_coords: tuple[int, int], aesthetic_score: float,
    ) -> torch.Tensor:
        """(B, 5): [original width, original height, crop top, crop left, aesthetic score]."""
        orig_h, orig_w = original_size or (height, width)
        values = [orig_w, orig_h, crop_coords[0], crop_coords[1], aesthetic_score]
        return torch.tensor([values], dtype=torch.float32, device=self._execution_device).expand(batch, 5)

    def model_timestep(self, step_index: int, num_steps: int, tokens: torch.Tensor) -> torch.Tensor:
        """What the transformer is fed as `timestep`, by its recorded convention (SPEC section 9)."""
        if self.transformer.config.timestep_convention == "mask_ratio":
            return (tokens == self.transformer.mask_token_id).flatten(1).float().mean(1)
        return torch.full((tokens.shape[0],), num_steps - 1 - step_index, device=tokens.device)

    @torch.no_grad()
    def denoise(
        self,
        tokens: torch.Tensor,
        states: torch.Tensor,
        pooled: torch.Tensor,
        micro_conds: torch.Tensor,
        num_inference_steps: int,
        guidance_scale: float,
        generator: Generators,
        temperature: tuple[float, float] | float,
        start_step: int = 0,
        starting_mask_ratio: torch.Tensor | float = 1.0,
        masking_schedule: str | None = None,
        callback_on_step_end: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run steps start_step .. N-1 of parallel decoding from `tokens` (B, h, w) and return the filled grids."""
        guided = guidance_scale > 1.0
        if guided:
            micro_conds = torch.cat([micro_conds, micro_conds])
        for i in self.progress_bar(range(start_step, num_inference_steps)):
            model_tokens = torch.cat([tokens, tokens]) if guided else tokens
            timestep = self.model_timestep(i, num_inference_steps, model_tokens)
            logits = self.transformer(model_tokens, states, pooled, timestep, micro_conds).float()
            if guided:
                uncond, cond = logits.chunk(2)
                logits = uncond + guidance_scale * (cond - uncond)
            tokens = self.scheduler.step(
                logits, i, num_inference_steps, tokens, generator=generator, temperature=temperature,
                starting_mask_ratio=starting_mask_ratio, masking_schedule=masking_schedule,
            ).prev_sample
            if callback_on_step_end is not None:
                update = callback_on_step_end(self, i, int(num_inference_steps - 1 - i),
                                              {"tokens": tokens, "logits": logits})
                if update and "tokens" in update:
                    tokens = update["tokens"]
        return tokens

    def check_common(
        self, num_inference_steps: int, guidance_scale: float, num_images_per_prompt: int, output_type: str,
        generator: Generators, batch: int,
    ) -> None:
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images; pass one per image or a single one")


def normalize_prompts(prompt: str | list[str] | None) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt is None:
        raise ValueError("a prompt (or prompt_embeds) is required")
    prompts = list(prompt)
    if not prompts:
        raise ValueError("the prompt list is empty")
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("every prompt must be a string")
    return prompts


def normalize_negative(negative_prompt: str | list[str] | None, batch: int) -> list[str]:
    if negative_prompt is None:
        return [""] * batch
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch
    negatives = list(negative_prompt)
    if len(negatives) != batch:
        raise ValueError(f"got {len(negatives)} negative prompts for {batch} prompts")
    return negatives


def prompt_count(prompt: str | list[str] | None, prompt_embeds: tuple[torch.Tensor, torch.Tensor] | None) -> int:
    if prompt_embeds is not None:
        return prompt_embeds[0].shape[0]
    return len(normalize_prompts(prompt))
