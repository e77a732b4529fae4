"""Text-to-image: parallel decoding from a fully masked token grid."""

from __future__ import annotations

import torch

from ..sampling.options import SamplerOptions
from ..sampling.scheduler import Generators
from .base import MeissonicPipelineBase, MeissonicPipelineOutput, StepCallback, prompt_count, resolve_sampler


class MeissonicPipeline(MeissonicPipelineBase):
    """Generate images from text. `pipe(prompt).images` is a list of PIL images."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: Generators = None,
        temperature: tuple[float, float] | float = (2.0, 0.0),
        masking_schedule: str | None = None,
        micro_conditioning_aesthetic_score: float = 6.0,
        micro_conditioning_crop_coord: tuple[int, int] = (0, 0),
        original_size: tuple[int, int] | None = None,
        prompt_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        negative_prompt_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        sampler: SamplerOptions | str | dict | None = None,
        **sampler_options,
    ) -> MeissonicPipelineOutput | tuple:
        """Generate `num_images_per_prompt` images for each prompt.

        guidance_scale > 1 runs classifier-free guidance against `negative_prompt` (default ""); temperature is the
        Gumbel temperature annealed from its first to its second value; micro-conditions are the aesthetic score,
        the crop (top, left) and the original (height, width), which defaults to the output size.
        output_type: "pil", "np", "pt" or "tokens" (the VQ token grids). Steps and guidance default to the
        checkpoint's `default_steps` / `default_guidance_scale` (released: 48 and 9), `sampler` to its
        `default_sampler` (released: vanilla; pass sampler="vanilla" for plain decoding); single sampler options
        given as keyword arguments (e.g. token_temperature=0.8) apply on top of either.
        """
        num_inference_steps, guidance_scale = self.sampling_defaults(num_inference_steps, guidance_scale)
        height = self.config.default_resolution if height is None else height
        width = self.config.default_resolution if width is None else width
        self.check_size(height, width)
        batch = prompt_count(prompt, prompt_embeds) * num_images_per_prompt
        self.check_common(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, generator, batch)

        options = resolve_sampler(sampler, sampler_options, self.default_sampler_options)
        guided = options.needs_unconditional(guidance_scale)
        states, pooled, batch = self.conditioning(prompt, negative_prompt, num_images_per_prompt, guided,
                                                  prompt_embeds, negative_prompt_embeds)
        grid = (height // self.vq_scale, width // self.vq_scale)
        tokens = torch.full((batch, *grid), self.transformer.mask_token_id, device=self._execution_device)
        micro = self.micro_conditions(batch, height, width, original_size, micro_conditioning_crop_coord,
                                      micro_conditioning_aesthetic_score)
        tokens = self.denoise(tokens, states, pooled, micro, num_inference_steps, guidance_scale, generator,
                              temperature, masking_schedule=masking_schedule,
                              callback_on_step_end=callback_on_step_end, sampler=options)
        return self.finish(tokens, output_type, return_dict)
