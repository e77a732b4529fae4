"""Pure schedule functions of parallel decoding: mask ratios, temperatures, timesteps."""

from __future__ import annotations

import math

import torch

MASKING_SCHEDULES = ("cosine", "linear")


def mask_ratio(progress: torch.Tensor | float, schedule: str = "cosine", early_steps: float = 0.5) -> torch.Tensor:
    """Fraction of tokens still masked after a fraction `progress` in [0, 1] of the steps.

    cosine: cos(pi/2 * p); linear: 1 - p, where p is the progress through the schedule (`schedule_progress`:
    with `early_steps` 0.5, p = progress). Both are 1 at the start and 0 at the end.
    """
    progress = schedule_progress(progress, early_steps)
    if schedule == "cosine":
        return torch.cos(progress * math.pi / 2).clamp(min=0.0)
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown masking schedule {schedule!r}; choose one of {MASKING_SCHEDULES}")


def schedule_progress(step_fraction: torch.Tensor | float, early_steps: float = 0.5) -> torch.Tensor:
    """Progress through the mask schedule after a fraction `step_fraction` of the steps.

    The first `early_steps` of the steps cover the first half of the progress, the rest the second half
    (piecewise linear); 0.5 is the plain schedule. Above 0.5 the early steps, where the layout of the image is
    decided, each commit fewer tokens (the default model samples with 0.7; docs/default_model.md).
    """
    if not 0.0 < early_steps < 1.0:
        raise ValueError(f"early_steps must be in (0, 1), got {early_steps!r}")
    step_fraction = torch.as_tensor(step_fraction, dtype=torch.float64)
    early = 0.5 * step_fraction / early_steps
    late = 0.5 + 0.5 * (step_fraction - early_steps) / (1.0 - early_steps)
    return torch.where(step_fraction <= early_steps, early, late)


def temperatures(num_steps: int, start: float = 2.0, end: float = 0.0) -> torch.Tensor:
    """Gumbel temperature of each step, annealed linearly from `start` to `end` over the steps."""
    return torch.linspace(start, end, num_steps, dtype=torch.float64)


def countdown_timesteps(num_steps: int) -> torch.Tensor:
    """The released sampler's timestep values: the step index counting down, N-1 .. 0."""
    return torch.arange(num_steps - 1, -1, -1)


def countdown_for_ratio(ratio: torch.Tensor | float, num_steps: int = 64) -> torch.Tensor:
    """The countdown timestep a cosine sampler of `num_steps` steps passes when a fraction `ratio` is masked.

    The released sampler passes N-1-i at step i, whose input has cos(pi/2 * i/N) masked; this inverts that map
    continuously, so training a "step_index" model (fine-tuning released weights) matches what sampling feeds it.
    """
    ratio = torch.as_tensor(ratio, dtype=torch.float64).clamp(0.0, 1.0)
    progress = torch.arccos(ratio) * 2 / math.pi
    return (num_steps - 1) - progress * num_steps
