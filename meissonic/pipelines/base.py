"""What the Meissonic pipelines share: loading, prompt encoding, the decoding loop and VQ conversion.

The three pipelines differ only in their start state (all masked, a partly masked image, a masked region).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..models.quantize import activation_layout, observe_activations, quantize_model
from ..models.text import encode_prompts
from ..models.tome import token_merging
from ..models.transformer import MeissonicTransformer2DModel
from ..sampling.enhance import differential_probs, guided_logits, halton_priority, normal_noise, zigzag_remask
from ..sampling.options import SamplerOptions
from ..sampling.scheduler import Generators, MeissonicScheduler
from .images import image_size, numpy_to_pil, tensor_to_numpy
from .loading import load_components, write_clip_vocabulary

OUTPUT_TYPES = ("pil", "np", "pt", "tokens", "latent")
MAX_SIDE = 4096
StepCallback = Callable[["MeissonicPipelineBase", int, int, dict], dict | None]


@dataclass
class MeissonicPipelineOutput(BaseOutput):
    """images: list of PIL images, a (B, H, W, 3) numpy array, a (B, 3, H, W) tensor, or token grids (B, h, w)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


# Settings a checkpoint may store in model_index.json beside its components (None: the released defaults).
TEXT2IMAGE_SETTINGS = ("default_steps", "default_guidance_scale", "default_sampler")
PIPELINE_SETTINGS = ("default_resolution", "prompt_rewrites", *TEXT2IMAGE_SETTINGS)
RELEASED_STEPS, RELEASED_GUIDANCE = 48, 9.0
logger = logging.getLogger(__name__)


class MeissonicPipelineBase(DiffusionPipeline):
    """Components: transformer, vqvae (diffusers VQModel), text_encoder (CLIPTextModelWithProjection), tokenizer
    (CLIPTokenizer), scheduler (MeissonicScheduler). Settings: `default_resolution` (the image side when no size
    is given), `default_steps`, `default_guidance_scale` and `default_sampler` (text-to-image defaults; released:
    48, 9 and vanilla decoding). `default_sampler` is stored as the SamplerOptions fields that differ from vanilla,
    e.g. {"guidance_interval": [0.0, 0.5]}. `prompt_rewrites`: regular-expression substitutions [pattern,
    replacement] applied in order to every prompt before it is encoded (released: none), for restatements a small
    model reads better than what the user typed; `rewrite_prompt` shows what the model reads."""

    model_cpu_offload_seq = "text_encoder->transformer->vqvae"
    _compile_freeze: bool | None = None  # None: sample eagerly; see `compile`
    _compiled: tuple | None = None  # (compiled callable, the module it wraps, its weights' storages and versions)

    def __init__(
        self,
        transformer: MeissonicTransformer2DModel,
        vqvae,
        text_encoder,
        tokenizer,
        scheduler: MeissonicScheduler,
        default_resolution: int | None = None,
        default_steps: int | None = None,
        default_guidance_scale: float | None = None,
        default_sampler: SamplerOptions | str | dict | None = None,
        prompt_rewrites: Sequence[Sequence[str]] | None = None,
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer, vqvae=vqvae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        rewrites = compile_rewrites(prompt_rewrites or ())
        try:
            sampler = resolve_sampler(default_sampler, {})
        except (TypeError, ValueError) as error:
            raise ValueError(f"default_sampler: {error}") from None
        if default_resolution is None:  # released checkpoints: 1024 px with feature compression, 512 px without
            default_resolution = 1024 if transformer.config.downsample else 512
        self.register_to_config(
            default_resolution=int(default_resolution),
            default_steps=int(default_steps or RELEASED_STEPS),
            default_guidance_scale=float(
                RELEASED_GUIDANCE if default_guidance_scale is None else default_guidance_scale
            ),
            default_sampler=sampler.changes(),
            prompt_rewrites=[[pattern.pattern, replacement] for pattern, replacement in rewrites],
        )
        self._rewrites = rewrites

    @property
    def settings(self) -> dict:
        return {name: self.config[name] for name in PIPELINE_SETTINGS}

    def sampling_defaults(self, num_inference_steps: int | None, guidance_scale: float | None) -> tuple[int, float]:
        """Text-to-image steps and guidance, None replaced by this checkpoint's `default_steps` /
        `default_guidance_scale` (other values, invalid ones included, are kept for the checks)."""
        steps = self.config.default_steps if num_inference_steps is None else num_inference_steps
        guidance = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        return steps, guidance

    @property
    def default_sampler_options(self) -> SamplerOptions:
        """The checkpoint's text-to-image sampler (`default_sampler`; vanilla decoding when it stores none)."""
        return SamplerOptions.from_dict(self.config.default_sampler)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, torch_dtype: torch.dtype | None = None, variant: str | None = None, **kwargs
    ) -> MeissonicPipelineBase:
        """Load a local folder in the released layout (or one written by `save_pretrained`).

        `torch_dtype` applies to the transformer and the text encoder (the VQ model stays float32 unless bfloat16
        is asked for); `variant` picks e.g. `diffusion_pytorch_model.fp16.safetensors`. Components and settings
        given as keyword arguments replace the stored ones.
        """
        components, extras = load_components(folder, torch_dtype=torch_dtype, variant=variant)
        unknown = set(kwargs) - set(components) - set(PIPELINE_SETTINGS)
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}")
        settings = {name: extras.get(name) for name in PIPELINE_SETTINGS}
        for name, value in kwargs.items():
            (components if name in components else settings)[name] = value
        return cls(**components, **settings)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """Write the released layout (safetensors weights; the tokenizer also as vocab.json + merges.txt)."""
        super().save_pretrained(save_directory, **kwargs)
        write_clip_vocabulary(Path(save_directory) / "tokenizer")

    @classmethod
    def from_pipe(cls, pipeline: MeissonicPipelineBase) -> MeissonicPipelineBase:
        """Another task's pipeline sharing the same components (no copy)."""
        return cls(**pipeline.components, **pipeline.settings)

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
    def rewrite_prompt(self, prompt: str) -> str:
        """The text the model reads for `prompt`: the checkpoint's `prompt_rewrites` applied in order."""
        for pattern, replacement in self._rewrites:
            prompt = pattern.sub(replacement, prompt)
        return prompt

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (rewritten by `rewrite_prompt`) -> (text states (B, L, D), pooled (B, P)) on the execution
        device."""
        prompts = [self.rewrite_prompt(p) for p in prompts]
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

        def decode(latents: torch.Tensor) -> torch.Tensor:
            images = vq.decoder(vq.post_quant_conv(latents), latents if vq.config.norm_type == "spatial" else None)
            return images.float().clamp(0, 1).contiguous()

        if quant.device.type != "cpu":
            return decode(quant)
        # oneDNN convolutions run ~1.8x faster channels-last, as accurately; channels-last results depend on the
        # batch size, so images are decoded one at a time, which keeps each image independent of its batch.
        return torch.cat([decode(q[None].contiguous(memory_format=torch.channels_last)) for q in quant])

    def edit_inputs(
        self, image, height: int | None, width: int | None, prompts: int
    ) -> tuple[list, tuple[int, int], int, int]:
        """The image list of an editing call, its first image's (height, width), and the checked output size
        (default: the first image's size). One image, or one per prompt."""
        images = image if isinstance(image, list) else [image]
        source = image_size(images[0])
        height = source[0] if height is None else height
        width = source[1] if width is None else width
        self.check_size(height, width)
        check_per_prompt(images, prompts, "images")
        return images, source, height, width

    def finish(self, tokens: torch.Tensor, output_type: str, return_dict: bool) -> MeissonicPipelineOutput | tuple:
        """Decode to `output_type`, release offload hooks, return diffusers-style."""
        output = self.to_output(tokens, output_type)
        self.maybe_free_model_hooks()
        return output if return_dict else (output.images,)

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
        sampler: SamplerOptions | None = None,
    ) -> torch.Tensor:
        """Run steps start_step .. N-1 of parallel decoding from `tokens` (B, h, w) and return the filled grids.

        `states`/`pooled` hold [uncond; cond] (2B rows) when some call needs the unconditional branch, else the
        B conditional rows. `sampler` switches the enhanced-inference techniques on (default: vanilla). All
        per-call state (the previous step's probabilities) lives in this call's local variables.
        """
        options = sampler or SamplerOptions()
        batch = tokens.shape[0]
        mask_id = self.transformer.mask_token_id
        has_uncond = states.shape[0] == 2 * batch
        editable = (tokens == mask_id).flatten(1)  # what this call may (re-)decide
        priority = halton_priority(*tokens.shape[-2:], batch, tokens.device) if options.order == "halton" else None
        transformer = self.sampling_transformer(options)

        def predict(current: torch.Tensor, step: int, scale: float) -> torch.Tensor:
            """Logits (B, C, h, w) at `step`'s timestep with guidance `scale` (1: conditional, 0: unconditional)."""
            timestep = self.model_timestep(step, num_inference_steps, current)
            if has_uncond and scale != 1.0:
                if scale == 0.0:
                    with activation_layout(self.transformer, "uncond"):
                        return transformer(current, states[:batch], pooled[:batch], timestep, micro_conds).float()
                with activation_layout(self.transformer, "split"):
                    logits = transformer(torch.cat([current, current]), states, pooled,
                                         torch.cat([timestep, timestep]),
                                         torch.cat([micro_conds, micro_conds])).float()
                uncond, cond = logits.chunk(2)
                return guided_logits(uncond, cond, scale)
            with activation_layout(self.transformer, "cond"):
                return transformer(current, states[-batch:], pooled[-batch:], timestep, micro_conds).float()

        def decode_step(current: torch.Tensor, step: int, previous: torch.Tensor | None):
            """One normal step; returns the new tokens, the probabilities it used and its logits."""
            logits = predict(current, step, options.guidance_at(step, num_inference_steps, guidance_scale))
            sigma = options.noise_sigma(step, num_inference_steps)
            if sigma > 0:  # noise regularization: the noisy probabilities drive the draw and the confidence
                logits = logits + sigma * normal_noise(logits.shape, generator, logits.device)
            token_temperature = options.token_temperature_at(step, num_inference_steps)
            if token_temperature != 1.0:
                logits = logits / token_temperature
            probs = draw_probs = None
            if options.differential:
                probs = torch.softmax(logits.flatten(2).transpose(1, 2), dim=-1)  # (B, N, C)
                if previous is not None:
                    draw_probs, _ = differential_probs(probs, previous, options.differential_fraction)
            current = self.scheduler.step(
                logits, step, num_inference_steps, current, generator=generator, temperature=temperature,
                starting_mask_ratio=starting_mask_ratio, masking_schedule=masking_schedule,
                early_steps=options.early_steps, draw_probs=draw_probs, priority=priority,
            ).prev_sample
            return current, probs, logits

        previous = None
        with token_merging(self.transformer, options.tome_ratio, options.tome_reuse, options.tome_seed):
            for i in self.progress_bar(range(start_step, num_inference_steps)):
                before = tokens
                tokens, probs, logits = decode_step(tokens, i, previous)
                if options.zigzag and i < num_inference_steps - 1:
                    # masked Z-sampling: invert at the next step's timestep, then redo step i
                    committed = ((before == mask_id) & (tokens != mask_id)).flatten(1).sum(-1)
                    inversion = predict(tokens, i + 1, options.zigzag_guidance)
                    tokens = zigzag_remask(tokens, inversion, committed - 1, editable, mask_id)
                    tokens, probs, logits = decode_step(tokens, i, previous)
                previous = probs
                if callback_on_step_end is not None:
                    update = callback_on_step_end(self, i, int(num_inference_steps - 1 - i),
                                                  {"tokens": tokens, "logits": logits})
                    if update and "tokens" in update:
                        tokens = update["tokens"]
        return tokens

    # ----- compilation --------------------------------------------------------------------------------------------
    def compile(self, freeze: bool = True) -> MeissonicPipelineBase:
        """Sample through `torch.compile` (inductor) from the next call on; returns the pipeline.

        On a CPU with `freeze` (weights folded into the compiled code, oneDNN-packed) a transformer call of the
        embedded model runs about 1.7x faster. Each new batch shape compiles once, in seconds to a minute (inductor
        caches on disk across processes), so it pays in long-running processes (servers, evaluations, grids),
        not for one image. The compiled code is rebuilt when the transformer or its weights change (`to`,
        `quantize`, loads in place or by assignment). Calls with token merging or W4A8 activations run eagerly,
        and if compilation fails (e.g. no C++ compiler) a warning is logged and sampling goes on eagerly.
        """
        self._compile_freeze, self._compiled = bool(freeze), None
        return self

    def sampling_transformer(self, options: SamplerOptions) -> Callable[..., torch.Tensor]:
        """What the decoding loop calls: the transformer, or its compiled form after `compile`."""
        model = self.transformer
        if self._compile_freeze is None or options.tome_ratio > 0 or hasattr(model, "_activation_layout"):
            return model
        # Weights replaced (another storage: a move, a load with assign=True) or changed in place (version counter).
        weights = [(p.data_ptr(), p._version) for p in model.parameters()]
        if self._compiled is None or self._compiled[1] is not model or self._compiled[2] != weights:
            compiled = torch.compile(model, dynamic=False, options={"freezing": self._compile_freeze})
            self._compiled = (compiled, model, weights)
        compiled = self._compiled[0]

        def call(*args: torch.Tensor) -> torch.Tensor:
            if self._compile_freeze is None:  # compilation failed earlier in this loop
                return model(*args)
            try:
                return compiled(*args)
            except Exception as error:  # noqa: BLE001 (any compiler failure: fall back, the eager call re-raises)
                logger.warning("torch.compile failed (%s: %s); sampling eagerly from now on",
                               type(error).__name__, error)
                self._compile_freeze, self._compiled = None, None
                return model(*args)

        return call

    # ----- quantization -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def quantize(
        self,
        mode: str = "int8",
        calibration_prompts: list[str] | None = None,
        calibration_steps: int = 8,
        guidance_scale: float = 9.0,
        batch_size: int = 4,
        group_size: int = 128,
        height: int | None = None,
        width: int | None = None,
        seed: int = 0,
    ) -> dict:
        """Quantize the transformer's Linear layers in place: "int8" or "fp8" weight-only, or "w4a8" (SCQ: 4-bit
        weights in groups of `group_size`, 8-bit activations with separate scales for the unconditional and
        conditional halves, calibrated by sampling `calibration_prompts` for `calibration_steps` steps with
        `guidance_scale`). Returns a report: bytes before/after, layers replaced, layers with activation scales."""
        self._compiled = None
        absmax = None
        if mode == "w4a8":
            if not calibration_prompts:
                raise ValueError("w4a8 needs calibration_prompts (a few hundred are recommended)")
            if guidance_scale <= 1.0:
                raise ValueError("w4a8 calibration needs guidance_scale > 1 to see both halves of the CFG batch")
            side = self.config.default_resolution
            height, width = height or side, width or side
            self.check_size(height, width)
            prompts = normalize_prompts(calibration_prompts)
            with observe_activations(self.transformer) as absmax:
                for start in range(0, len(prompts), batch_size):
                    chunk = prompts[start:start + batch_size]
                    states, pooled, batch = self.conditioning(chunk, None, 1, True)
                    tokens = torch.full((batch, height // self.vq_scale, width // self.vq_scale),
                                        self.transformer.mask_token_id, device=self._execution_device)
                    micro = self.micro_conditions(batch, height, width, None, (0, 0), 6.0)
                    generator = [torch.Generator().manual_seed(seed + start + j) for j in range(batch)]
                    self.denoise(tokens, states, pooled, micro, calibration_steps, guidance_scale, generator,
                                 (2.0, 0.0))
        report = quantize_model(self.transformer, mode, group_size, absmax)
        report["calibration_prompts"] = len(calibration_prompts or []) if mode == "w4a8" else 0
        return report

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


def resolve_sampler(
    sampler: SamplerOptions | str | dict | None, overrides: dict, default: SamplerOptions | None = None
) -> SamplerOptions:
    """The call's SamplerOptions: `sampler` (options, a "key=value,..." string or a dict; None: `default`, else
    vanilla) with individual keyword arguments (e.g. noise_reg=2.0) applied on top."""
    if sampler is None:
        options = default or SamplerOptions()
    elif isinstance(sampler, SamplerOptions):
        options = sampler
    elif isinstance(sampler, str):
        options = SamplerOptions.parse(sampler)
    elif isinstance(sampler, dict):
        options = SamplerOptions.from_dict(sampler)
    else:
        raise ValueError(f"sampler must be SamplerOptions, a string or a dict, got {type(sampler).__name__}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(SamplerOptions)})
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown} (neither a pipeline argument nor a "
                        "SamplerOptions field)")
    return dataclasses.replace(options, **overrides) if overrides else options


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


def check_per_prompt(items: list, prompts: int, name: str) -> None:
    if len(items) not in (1, prompts):
        raise ValueError(f"got {len(items)} {name} for {prompts} prompts; pass one or one per prompt")


def compile_rewrites(rules: Sequence[Sequence[str]]) -> list[tuple[re.Pattern, str]]:
    """Validate `prompt_rewrites` ([pattern, replacement] pairs) and compile their patterns."""
    compiled = []
    for i, rule in enumerate(rules):
        if isinstance(rule, str) or len(rule) != 2 or not all(isinstance(part, str) for part in rule):
            raise ValueError(f"prompt_rewrites[{i}] must be a [pattern, replacement] pair of strings, got {rule!r}")
        try:
            pattern = re.compile(rule[0])
            pattern.sub(rule[1], "")  # parses the replacement: a bad group reference fails here, not on a prompt
        except (re.error, IndexError) as error:  # IndexError: a reference to a group the pattern lacks
            raise ValueError(f"prompt_rewrites[{i}]: {error}") from None
        compiled.append((pattern, rule[1]))
    return compiled
