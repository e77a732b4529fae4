"""Image-to-image: re-generate a random part of an image's tokens, as much as `strength` says."""

from __future__ import annotations

import torch

from ..sampling.options import SamplerOptions
from ..sampling.scheduler import Generators
from ..sampling.schedules import mask_ratio
from .base import MeissonicPipelineBase, MeissonicPipelineOutput, StepCallback, prompt_count, resolve_sampler
from .images import ImageInput, images_to_tensor


def start_step(num_inference_steps: int, strength: float) -> int:
    """First step to run: strength 1 runs all steps from a fully masked grid; smaller strengths skip the start."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return num_inference_steps - max(1, int(num_inference_steps * strength))


class MeissonicImg2ImgPipeline(MeissonicPipelineBase):
    """Edit images guided by text: `pipe(prompt, image=..., strength=0.5).images`."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | list[ImageInput] | None = None,
        strength: float = 0.5,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 12,
        guidance_scale: float = 10.0,
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
        """Re-generate the tokens of `image` (one image, or one per prompt) that step N - int(N * strength) of the
        mask schedule would still have masked: strength 1.0 regenerates everything, small strengths keep most of
        the image. The output size defaults to the image's size."""
        if image is None:
            raise ValueError("img2img needs an image")
        prompts = prompt_count(prompt, prompt_embeds)
        images, _, height, width = self.edit_inputs(image, height, width, prompts)
        batch = prompts * num_images_per_prompt
        self.check_common(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, generator, batch)
        first = start_step(num_inference_steps, strength)

        options = resolve_sampler(sampler, sampler_options)
        guided = options.needs_unconditional(guidance_scale)
        states, pooled, batch = self.conditioning(prompt, negative_prompt, num_images_per_prompt, guided,
                                                  prompt_embeds, negative_prompt_embeds)
        pixels = images_to_tensor(images, height, width).to(self._execution_device)
        tokens = self.encode_images(pixels).repeat_interleave(batch // len(images), 0)
        schedule = masking_schedule or self.scheduler.config.masking_schedule
        ratio = float(mask_ratio(first / num_inference_steps, schedule, options.early_steps))
        tokens = self.scheduler.add_noise(tokens, ratio, generator)
        micro = self.micro_conditions(batch, height, width, original_size, micro_conditioning_crop_coord,
                                      micro_conditioning_aesthetic_score)
        tokens = self.denoise(tokens, states, pooled, micro, num_inference_steps, guidance_scale, generator,
                              temperature, start_step=first, masking_schedule=masking_schedule,
                              callback_on_step_end=callback_on_step_end, sampler=options)
        return self.finish(tokens, output_type, return_dict)
