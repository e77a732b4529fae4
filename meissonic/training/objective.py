"""The masked-token objective (SPEC section 8), classifier-free-guidance dropout, the preference (DPO)
objective on pairs of token grids, and guidance distillation.

All randomness of a step is drawn for the whole global batch from a generator seeded by (seed, step); each
process slices its samples. Runs are therefore reproducible across resumption and across process counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..sampling.schedules import countdown_for_ratio


@dataclass
class StepNoise:
    """Random choices of one optimizer step for every sample of the global batch."""

    masks: torch.Tensor  # (G, L) bool: positions replaced by the mask id
    drop: torch.Tensor  # (G,) bool: samples trained on the empty prompt

    def slice(self, start: int, size: int) -> StepNoise:
        return StepNoise(self.masks[start : start + size], self.drop[start : start + size])


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63 - 1))
    return generator


def sample_masks(
    batch: int, seq_len: int, generator: torch.Generator, min_masked: int = 1, min_mask_ratio: float = 0.0,
    full_mask_fraction: float = 0.0,
) -> torch.Tensor:
    """Per sample u ~ U(0,1), r = cos(pi u / 2), n = max(min_masked, round(r L)) positions masked,
    uniformly. `min_mask_ratio` > 0 draws u from U(0, u_max) with cos(pi u_max / 2) = min_mask_ratio: the
    same cosine density restricted to ratios >= min_mask_ratio (the steps where the layout is still open).
    `full_mask_fraction` > 0 masks each sample whole with that probability instead (where sampling starts: the
    caption alone must place the objects); at 0 the draws are those of earlier versions."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    if min_mask_ratio > 0:
        u = u * (2 / math.pi) * math.acos(min_mask_ratio)
    counts = torch.round(torch.cos(math.pi * u / 2) * seq_len).long().clamp(min=min_masked, max=seq_len)
    if full_mask_fraction > 0:
        whole = torch.rand(batch, generator=generator, dtype=torch.float64) < full_mask_fraction
        counts = torch.where(whole, seq_len, counts)
    scores = torch.rand(batch, seq_len, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


def step_noise(
    seed: int,
    step: int,
    global_batch: int,
    seq_len: int,
    cfg_dropout: float,
    min_masked: int = 1,
    min_mask_ratio: float = 0.0,
    full_mask_fraction: float = 0.0,
) -> StepNoise:
    generator = step_generator(seed, step)
    masks = sample_masks(global_batch, seq_len, generator, min_masked, min_mask_ratio, full_mask_fraction)
    drop = torch.rand(global_batch, generator=generator) < cfg_dropout
    return StepNoise(masks, drop)


def timestep_for(masked_fraction: torch.Tensor, convention: str) -> torch.Tensor:
    """What the model is fed as `timestep` for inputs with this masked fraction (SPEC section 9)."""
    if convention == "mask_ratio":
        return masked_fraction.float()
    if convention == "step_index":
        return countdown_for_ratio(masked_fraction, 64).float()
    raise ValueError(f"unknown timestep convention {convention!r}")


def apply_cfg_dropout(
    states: torch.Tensor,
    pooled: torch.Tensor,
    empty_states: torch.Tensor,
    empty_pooled: torch.Tensor,
    drop: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace text states AND pooled text of the samples where `drop` is true by the empty prompt's.

    Call this after any (re-)encoding of the prompts, right before the transformer, so nothing overwrites it.
    """
    drop = drop.to(states.device)
    states = torch.where(drop[:, None, None], empty_states.to(states.dtype).expand_as(states), states)
    pooled = torch.where(drop[:, None], empty_pooled.to(pooled.dtype).expand_as(pooled), pooled)
    return states, pooled


def masked_inputs(tokens: torch.Tensor, masks: torch.Tensor, mask_id: int) -> torch.Tensor:
    """tokens (B, H, W) with the positions of `masks` (B, H*W) set to the mask id."""
    return torch.where(masks.view_as(tokens).to(tokens.device), torch.full_like(tokens, mask_id), tokens)


def masked_cross_entropy_sum(logits: torch.Tensor, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Sum over masked positions of the cross-entropy of logits (B, C, H, W) against targets (B, H, W)."""
    flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    selected = masks.reshape(-1).to(logits.device)
    return F.cross_entropy(
        flat_logits[selected].float(), tokens.reshape(-1)[selected].long(), reduction="sum"
    )


def masked_log_likelihood(logits: torch.Tensor, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per sample, the summed log-probability of `tokens` (B, H, W) at the positions of `masks` (B, H*W) under
    logits (B, C, H, W), in float32: (B,)."""
    log_probs = logits.float().log_softmax(dim=1)
    picked = log_probs.gather(1, tokens.long()[:, None]).squeeze(1).flatten(1)  # (B, H*W)
    return (picked * masks.to(picked.device).flatten(1)).sum(dim=1)


def preference_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023) on log-likelihoods (B,): -log sigmoid(beta * margin), where margin is how much
    more the model raised the chosen sample's log-likelihood over the reference's than the rejected one's.
    Returns (per-sample losses, margins)."""
    margins = (chosen - reference_chosen) - (rejected - reference_rejected)
    return -F.logsigmoid(beta * margins), margins


def distillation_scales(mask_ratios: torch.Tensor, schedule: list[tuple[float, float]]) -> torch.Tensor:
    """Guidance scale per sample (B,) for inputs with these mask ratios (B,): the scale of the first
    (ratio, scale) pair of `schedule` (ratios decreasing, the last 0) whose ratio the input's exceeds."""
    scales = torch.full_like(mask_ratios, schedule[-1][1], dtype=torch.float32)
    for ratio, scale in reversed(schedule[:-1]):
        scales = torch.where(mask_ratios > ratio, torch.full_like(scales, scale), scales)
    return scales


def masked_kl_sum(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Sum over masked positions of KL(softmax(teacher) || softmax(student)), logits (B, C, H, W), in float32."""
    selected = masks.reshape(-1).to(student.device)
    flat = [x.float().permute(0, 2, 3, 1).reshape(-1, x.shape[1])[selected] for x in (student, teacher)]
    student_log, teacher_log = (x.log_softmax(dim=-1) for x in flat)
    return (teacher_log.exp() * (teacher_log - student_log)).sum()
