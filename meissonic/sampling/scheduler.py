"""MeissonicScheduler: one step of MaskGIT-style parallel decoding (SPEC section 6).

The scheduler keeps no per-call state: everything a step needs is an argument, so no call can leak into the next
(the reference sets temperatures in `set_timesteps` and flips its config to "linear" for inpainting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .schedules import MASKING_SCHEDULES, countdown_timesteps, mask_ratio, temperatures


@dataclass
class MeissonicSchedulerOutput(BaseOutput):
    """prev_sample: the token grid for the next step (B, H, W); pred_original_sample: the fully drawn grid."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


Generators = torch.Generator | list[torch.Generator] | None


def _uniform(shape: torch.Size, generator: Generators, device: torch.device) -> torch.Tensor:
    """U(0,1) noise; with a list of generators, row b of the batch comes from generator b alone."""
    if isinstance(generator, list):
        return torch.cat([_uniform((1, *shape[1:]), g, device) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def gumbel_noise(shape: torch.Size, generator: Generators, device: torch.device) -> torch.Tensor:
    u = _uniform(shape, generator, device)
    return -torch.log((-torch.log(u.clamp(1e-20))).clamp(1e-20))


def draw_tokens(probs: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """One multinomial draw per position: probs (B, N, C) -> tokens (B, N)."""
    if isinstance(generator, list):
        return torch.cat([draw_tokens(p[None], g) for p, g in zip(probs, generator, strict=True)])
    batch, seq_len, classes = probs.shape
    flat = probs.reshape(-1, classes)
    if generator is not None and generator.device != flat.device:
        flat = flat.to(generator.device)
    return torch.multinomial(flat, 1, generator=generator).to(probs.device).view(batch, seq_len)


def lowest_k(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean (B, N): for each row b, exactly the k[b] positions with the lowest scores (ties by position)."""
    order = scores.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                                            .expand_as(order).contiguous())
    return ranks < k[:, None]


class MeissonicScheduler(SchedulerMixin, ConfigMixin):
    """Iterative parallel decoding: draw every masked token, keep the confident ones, re-mask the rest.

    Config (as released): `mask_token_id`, `masking_schedule` ("cosine" or "linear").
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, mask_token_id: int = 8255, masking_schedule: str = "cosine"):
        if masking_schedule not in MASKING_SCHEDULES:
            raise ValueError(f"unknown masking schedule {masking_schedule!r}; choose one of {MASKING_SCHEDULES}")

    @staticmethod
    def timesteps(num_inference_steps: int) -> torch.Tensor:
        """The released sampler's timestep per step: the step index counting down (SPEC section 9)."""
        return countdown_timesteps(num_inference_steps)

    def num_masked_after(
        self,
        step_index: int,
        num_inference_steps: int,
        seq_len: int,
        starting_mask_ratio: torch.Tensor | float = 1.0,
        masking_schedule: str | None = None,
        early_steps: float = 0.5,
    ) -> torch.Tensor:
        """How many tokens step `step_index` leaves masked (before clamping to the masked count): (B,) or ().

        `early_steps`: the fraction of the steps that covers the first half of the schedule (`schedule_progress`).
        """
        ratio = mask_ratio((step_index + 1) / num_inference_steps, masking_schedule or self.config.masking_schedule,
                           early_steps)
        start = torch.as_tensor(starting_mask_ratio, dtype=torch.float64)
        return torch.floor(seq_len * ratio * start).long()

    def add_noise(
        self, tokens: torch.Tensor, ratio: float, generator: Generators = None, region: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mask exactly round(ratio * n) uniformly random positions of each grid (B, H, W), where n is the grid
        size, or the size of each sample's boolean `region` (B, H, W) when given (masking only inside it)."""
        batch = tokens.shape[0]
        scores = _uniform((batch, tokens[0].numel()), generator, tokens.device)
        if region is None:
            count = torch.full((batch,), round(ratio * scores.shape[1]), device=tokens.device)
        else:
            region = region.reshape(batch, -1)
            count = torch.round(region.sum(-1) * ratio).long()
            scores = scores.masked_fill(~region, math.inf)
        chosen = lowest_k(scores, count)
        return tokens.masked_fill(chosen.view_as(tokens), self.config.mask_token_id)

    def step(
        self,
        model_output: torch.Tensor,
        step_index: int,
        num_inference_steps: int,
        sample: torch.Tensor,
        *,
        generator: Generators = None,
        temperature: tuple[float, float] | float = (2.0, 0.0),
        starting_mask_ratio: torch.Tensor | float = 1.0,
        masking_schedule: str | None = None,
        early_steps: float = 0.5,
        draw_probs: torch.Tensor | None = None,
        priority: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> MeissonicSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Advance one step.

        model_output: logits (B, C, H, W) (after guidance); sample: current tokens (B, H, W) with mask ids;
        step_index: 0 .. num_inference_steps-1; temperature: (start, end) of the Gumbel temperature, annealed
        linearly over the steps (a single number t means (t, 0.01) as in aMUSEd); starting_mask_ratio: scale of
        the mask schedule, per sample (B,) or global (inpainting uses the masked fraction); early_steps: the
        fraction of the steps spent on the first half of the schedule (0.5: the plain schedule).
        draw_probs: optional (B, N, C) distributions to draw the tokens from instead of softmax(model_output)
        (differential sampling); the confidence still uses softmax(model_output).
        priority: optional (B, N) fixed unmasking priority replacing the Gumbel-perturbed confidence (higher is
        kept first; e.g. the Halton order), so which positions are decided does not depend on the logits.
        """
        if not 0 <= step_index < num_inference_steps:
            raise ValueError(f"step_index {step_index} outside 0..{num_inference_steps - 1}")
        batch, height, width = sample.shape
        seq_len = height * width
        mask_id = self.config.mask_token_id
        tokens = sample.reshape(batch, seq_len)
        unknown = tokens == mask_id  # (B, N)

        logits = model_output.reshape(batch, model_output.shape[1], seq_len).transpose(1, 2).float()  # (B, N, C)
        log_probs = torch.log_softmax(logits, dim=-1)
        if draw_probs is not None and draw_probs.shape != log_probs.shape:
            raise ValueError(f"draw_probs shape {tuple(draw_probs.shape)} != (B, N, C) {tuple(log_probs.shape)}")
        probs = log_probs.exp() if draw_probs is None else draw_probs
        drawn = torch.where(unknown, draw_tokens(probs, generator), tokens)

        if step_index == num_inference_steps - 1:
            prev = drawn
        else:
            num_masked = unknown.sum(-1)
            k = self.num_masked_after(step_index, num_inference_steps, seq_len, starting_mask_ratio,
                                      masking_schedule, early_steps).to(sample.device).expand(batch)
            k = torch.minimum(k, num_masked - 1).clamp(min=1)
            k = torch.where(num_masked > 0, k, torch.zeros_like(k))  # nothing left to decide
            if priority is None:
                start, end = (temperature, 0.01) if isinstance(temperature, (int, float)) else temperature
                tau = temperatures(num_inference_steps, start, end)[step_index].item()
                chosen = log_probs.gather(-1, drawn[..., None].clamp(max=logits.shape[-1] - 1)).squeeze(-1)
                confidence = chosen + tau * gumbel_noise(chosen.shape, generator, chosen.device)
            else:
                confidence = priority.to(sample.device, torch.float32).expand(batch, seq_len).clone()
            confidence = confidence.masked_fill(~unknown, math.inf)  # known tokens are never re-masked
            prev = drawn.masked_fill(lowest_k(confidence, k), mask_id)

        prev, drawn = prev.view_as(sample), drawn.view_as(sample)
        if not return_dict:
            return prev, drawn
        return MeissonicSchedulerOutput(prev_sample=prev, pred_original_sample=drawn)
