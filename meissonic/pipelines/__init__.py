"""Diffusers-style pipelines: text-to-image, image-to-image, inpainting and outpainting."""

from .base import MeissonicPipelineBase, MeissonicPipelineOutput
from .image2image import MeissonicImg2ImgPipeline
from .inpaint import MeissonicInpaintPipeline
from .loading import CheckpointError
from .text2image import MeissonicPipeline

__all__ = [
    "CheckpointError",
    "MeissonicImg2ImgPipeline",
    "MeissonicInpaintPipeline",
    "MeissonicPipeline",
    "MeissonicPipelineBase",
    "MeissonicPipelineOutput",
]
