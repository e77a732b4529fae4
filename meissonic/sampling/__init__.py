"""Parallel decoding: mask schedules and the scheduler step."""

from .schedules import countdown_timesteps, mask_ratio, temperatures
from .scheduler import MeissonicScheduler, MeissonicSchedulerOutput

__all__ = ["MeissonicScheduler", "MeissonicSchedulerOutput", "countdown_timesteps", "mask_ratio", "temperatures"]
