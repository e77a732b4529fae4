"""Parallel decoding: mask schedules and the scheduler step."""

from .scheduler import MeissonicScheduler, MeissonicSchedulerOutput
from .schedules import countdown_timesteps, mask_ratio, temperatures

__all__ = ["MeissonicScheduler", "MeissonicSchedulerOutput", "countdown_timesteps", "mask_ratio", "temperatures"]
