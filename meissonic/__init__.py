"""Meissonic: masked generative transformers for text-to-image generation, editing and training."""

from .models import MeissonicTransformer2DModel
from .pipelines import (
    MeissonicImg2ImgPipeline,
    MeissonicInpaintPipeline,
    MeissonicPipeline,
    MeissonicPipelineOutput,
)
from .sampling import MeissonicScheduler, SamplerOptions

__version__ = "0.1.0"
__all__ = [
    "MeissonicImg2ImgPipeline",
    "MeissonicInpaintPipeline",
    "MeissonicPipeline",
    "MeissonicPipelineOutput",
    "MeissonicScheduler",
    "MeissonicTransformer2DModel",
    "SamplerOptions",
]
