"""Optimizer with the right weight-decay groups, and warm-up + decay learning-rate schedules."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .config import OptimConfig


def decay_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Trainable parameters split into decayed (matrices, convolutions) and not decayed (biases, norm weights,
    embeddings: every parameter with fewer than 2 dims, plus `nn.Embedding` tables)."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or id(param) in embedding_params else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if lr is not None:
        for group in groups:
            group["lr"] = lr
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW when asked for and installed (else AdamW with a warning)."""
    kwargs = dict(lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, **kwargs)
        except ImportError:
            warnings.warn(
                "bitsandbytes is not installed: using torch AdamW instead of 8-bit AdamW", stacklevel=2
            )
    return torch.optim.AdamW(groups, **kwargs)


def lr_factor(step: int, config: OptimConfig, max_steps: int) -> float:
    """Multiplier of the base LR at `step`: linear warm-up, then constant, cosine or linear decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, max_steps - config.warmup_steps))
    floor = config.min_lr_ratio
    if config.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config, max_steps))
