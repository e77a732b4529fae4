"""Parallel decoding: mask schedules, the scheduler step and the enhanced-inference options."""

from .options import SamplerOptions
from .scheduler import MeissonicScheduler, MeissonicSchedulerOutput
from .schedules import countdown_timesteps, mask_ratio, temperatures

__all__ = [
    "MeissonicScheduler",
    "MeissonicSchedulerOutput",
    "SamplerOptions",
    "countdown_timesteps",
    "mask_ratio",
    "temperatures",
]
