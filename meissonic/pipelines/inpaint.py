"""Inpainting and outpainting: re-generate only the tokens under a mask."""

from __future__ import annotations

import torch

from ..sampling.options import SamplerOptions
from ..sampling.scheduler import Generators
from ..sampling.schedules import mask_ratio
from .base import (
    MeissonicPipelineBase,
    MeissonicPipelineOutput,
    StepCallback,
    check_per_prompt,
    prompt_count,
    resolve_sampler,
)
from .image2image import start_step
from .images import ImageInput, image_size, images_to_tensor, masks_to_grid, outpaint_canvas


class MeissonicInpaintPipeline(MeissonicPipelineBase):
    """`pipe(prompt, image=..., mask_image=...)` re-generates the white part of the mask; `pipe.outpaint(...)`
    extends the canvas and generates the new border."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | list[ImageInput] | None = None,
        mask_image: ImageInput | list[ImageInput] | None = None,
        strength: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 12,
        guidance_scale: float = 10.0,
        num_images_per_prompt: int = 1,
        generator: Generators = None,
        temperature: tuple[float, float] | float = (2.0, 0.0),
        masking_schedule: str = "linear",
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
        """Tokens under the white part of `mask_image` (resized to the token grid, threshold 0.5) are regenerated,
        all others kept exactly. The schedule ("linear" by default) is scaled by each mask's area; strength < 1
        keeps a random part of the masked tokens as a starting point, like img2img."""
        if image is None or mask_image is None:
            raise ValueError("inpainting needs both an image and a mask_image")
        prompts = prompt_count(prompt, prompt_embeds)
        images, source, height, width = self.edit_inputs(image, height, width, prompts)
        masks = mask_image if isinstance(mask_image, list) else [mask_image]
        for mask in masks:
            if image_size(mask) != source:
                raise ValueError(f"mask size {image_size(mask)} differs from image size {source} (h, w)")
        check_per_prompt(masks, prompts, "masks")
        batch = prompts * num_images_per_prompt
        self.check_common(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, generator, batch)
        first = start_step(num_inference_steps, strength)

        options = resolve_sampler(sampler, sampler_options)
        guided = options.needs_unconditional(guidance_scale)
        states, pooled, batch = self.conditioning(prompt, negative_prompt, num_images_per_prompt, guided,
                                                  prompt_embeds, negative_prompt_embeds)
        device = self._execution_device
        pixels = images_to_tensor(images, height, width).to(device)
        tokens = self.encode_images(pixels)
        region = masks_to_grid(masks, *tokens.shape[-2:]).to(device)
        tokens = tokens.expand(len(region), -1, -1) if len(tokens) == 1 else tokens
        region = region.expand(len(tokens), -1, -1) if len(region) == 1 else region
        tokens = tokens.repeat_interleave(batch // len(tokens), 0)
        region = region.repeat_interleave(batch // len(region), 0)
        if not region.any():
            raise ValueError("the mask is empty on the token grid: nothing to inpaint (white marks what to regenerate)")

        ratio = float(mask_ratio(first / num_inference_steps, masking_schedule, options.early_steps))
        tokens = self.scheduler.add_noise(tokens, ratio, generator, region=region)
        masked_fraction = region.flatten(1).float().mean(1)
        micro = self.micro_conditions(batch, height, width, original_size, micro_conditioning_crop_coord,
                                      micro_conditioning_aesthetic_score)
        tokens = self.denoise(tokens, states, pooled, micro, num_inference_steps, guidance_scale, generator,
                              temperature, start_step=first, starting_mask_ratio=masked_fraction,
                              masking_schedule=masking_schedule, callback_on_step_end=callback_on_step_end,
                              sampler=options)
        return self.finish(tokens, output_type, return_dict)

    def outpaint(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | None = None,
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        **kwargs,
    ) -> MeissonicPipelineOutput | tuple:
        """Extend `image` by the given pixels on each side and generate the new area; the canvas size must be a
        multiple of the stride. Other arguments as for inpainting."""
        if image is None:
            raise ValueError("outpainting needs an image")
        canvas, mask = outpaint_canvas(image, left, right, top, bottom)
        self.check_size(canvas.height, canvas.width)
        return self(prompt, image=canvas, mask_image=mask, **kwargs)
