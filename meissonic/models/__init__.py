"""Neural networks: the Meissonic transformer and its layers."""

from .transformer import MeissonicTransformer2DModel

__all__ = ["MeissonicTransformer2DModel"]
