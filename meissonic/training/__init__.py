"""Training: the transformer (four-stage recipe, fine-tuning, LoRA) and the VQ tokenizer, on accelerate.

Entry points: `meissonic train`, `meissonic train-vq`, `meissonic preencode` (see configs/train, configs/vq).
"""

from .config import TrainConfig, VQTrainConfig, load_config

__all__ = ["TrainConfig", "VQTrainConfig", "load_config"]
