"""Reward-filtered self-samples of the world: training data made by a model from its own successes (and, for
preference training, its failures).

A model samples images for training-split world prompts with its default sampler; the world detector scores
each against its prompt, and only the token grids it reads as fully correct are kept (rejection sampling
against an exact reward). Each kept grid is paired with a fresh training render, VQ-encoded, so that
fine-tuning on the shards (`meissonic train`, data format `preencoded`) moves the model towards what it draws
right while the renders keep it anchored to true shapes. Held-out compositions never enter: prompts come from
`training_tasks` and renders from `training_example`.

`write_preference_pairs` draws several images per prompt instead and keeps, for prompts drawn both right and
wrong, disjoint (right, wrong) pairs of token grids: rows whose `tokens` are the chosen grid and
`rejected_tokens` the rejected one, for the preference objective (`objective.preference_beta` > 0 in a training config).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data import ShardWriter
from ..eval.world import check_task
from ..pipelines.images import images_to_tensor
from ..world import detect, render, training_example, training_tasks
from .preencode import shard_meta
from .train import encode_ids, tokenize, vq_encode


def _encode_text(tokenizer, text_encoder, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    states, pooled = encode_ids(text_encoder, tokenize(tokenizer, text_encoder, captions))
    return states.to(torch.bfloat16), pooled.float()


def _open_writer(pipeline, output: str | Path) -> tuple[int, ShardWriter, torch.Tensor]:
    """The pipeline's resolution, a shard writer for its token grids with embedded text, and the micro-conditions
    world renders are encoded with (full image, no crop)."""
    side = pipeline.config.default_resolution
    codes = pipeline.vqvae.config.num_vq_embeddings
    meta = shard_meta(side, side // pipeline.vq_scale, codes, "embeddings", pipeline.tokenizer,
                      pipeline.text_encoder)
    return side, ShardWriter(output, meta), torch.tensor([side, side, 0.0, 0.0, 6.0])



def _draws(pipeline, tasks: list, seed: int, samples_per_prompt: int, batch_size: int, side: int):
    """Draw each task `samples_per_prompt` (K) times with `pipeline`'s defaults, as many tasks per call as
    `batch_size` holds. Image j of task i is drawn with the generator seeded `1_000_000 * seed + j * len(tasks) + i`.
    Yields, per call, the index of its first task, its tasks, their token grids (K rows per task, in order) and,
    per task, the rows the world detector reads as correct (what `meissonic eval world` scores)."""
    per_batch = max(1, batch_size // samples_per_prompt)
    for first in range(0, len(tasks), per_batch):
        chunk = tasks[first:first + per_batch]
        generators = [
            torch.Generator().manual_seed(1_000_000 * seed + j * len(tasks) + first + i)
            for i in range(len(chunk)) for j in range(samples_per_prompt)
        ]
        tokens = pipeline([t.text for t in chunk for _ in range(samples_per_prompt)], height=side, width=side,
                          generator=generators, output_type="tokens").images
        images = pipeline.to_output(tokens, "pil").images
        good = [
            [r for r in range(i * samples_per_prompt, (i + 1) * samples_per_prompt)
             if check_task(task, detect(images[r])).correct]
            for i, task in enumerate(chunk)
        ]
        yield first, chunk, tokens, good


@torch.no_grad()
def write_self_samples(
    pipeline,
    vqvae,
    output: str | Path,
    num_prompts: int,
    seed: int = 0,
    render_seed: int = 0,
    batch_size: int = 16,
    progress: Callable[[int, int, int], None] | None = None,
    samples_per_prompt: int = 1,
) -> dict:
    """Sample `num_prompts` training-split prompts with `pipeline`'s defaults, keep the correct grids, pair each
    with a training render encoded by `vqvae` (float32), and write both as preencoded shards under `output`.

    Each prompt of `training_tasks(num_prompts, seed)` is drawn `samples_per_prompt` (K) times and keeps its
    first correct grid, if any: with K > 1 the rows hold the prompts the model gets right at least once in K
    (best-of-K), not only those it gets right at the first draw, so the prompts it finds hard weigh more. Image j
    of prompt i is drawn with the generator seeded `1_000_000 * seed + j * num_prompts + i`; render k is
    `training_example(k, render_seed)` under one of its captions, drawn from `numpy.random.default_rng(seed)`.
    Returns the index, whose `self_samples` entry counts prompts, images drawn right and kept grids per task type.
    """
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    side, writer, micro = _open_writer(pipeline, output)
    tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder
    rng = np.random.default_rng(seed)

    def add(tokens: torch.Tensor, captions: list[str]) -> None:
        states, pooled = _encode_text(tokenizer, text_encoder, captions)
        rows = {"tokens": tokens.to(torch.int16).cpu(), "micro_conds": micro.expand(len(captions), 5).clone(),
                "text_states": states, "pooled": pooled}
        writer.add(rows, captions)

    tasks = training_tasks(num_prompts, seed)
    prompts, right, kept = Counter(), Counter(), Counter()
    renders = 0
    start = time.perf_counter()
    for first, chunk, tokens, good in _draws(pipeline, tasks, seed, samples_per_prompt, batch_size, side):
        keep, texts = [], []
        for task, rows in zip(chunk, good, strict=True):
            prompts[task.task_type] += 1
            right[task.task_type] += len(rows)
            if rows:
                kept[task.task_type] += 1
                keep.append(rows[0])
                texts.append(task.text)
        if keep:
            add(tokens[keep], texts)
            scenes, captions = [], []
            for _ in keep:
                scene, options = training_example(renders, seed=render_seed)
                renders += 1
                scenes.append(scene)
                captions.append(options[int(rng.integers(len(options)))])
            pixels = images_to_tensor([render(scene, side) for scene in scenes], side, side)
            add(vq_encode(vqvae, pixels.to(next(vqvae.parameters()).device)), captions)
        if progress is not None:
            progress(first + len(chunk), len(tasks), sum(kept.values()))
    states, pooled = _encode_text(tokenizer, text_encoder, [""])
    writer.meta["self_samples"] = {
        "prompts": dict(prompts), "right": dict(right), "kept": dict(kept), "renders": renders, "seed": seed,
        "render_seed": render_seed, "samples_per_prompt": samples_per_prompt,
        "seconds": round(time.perf_counter() - start, 1),
    }
    writer.close({"text_states": states.float(), "pooled": pooled.float()})
    return dict(writer.meta, count=writer.count)


@torch.no_grad()
def write_preference_pairs(
    pipeline,
    output: str | Path,
    num_prompts: int,
    seed: int = 0,
    samples_per_prompt: int = 4,
    batch_size: int = 16,
    progress: Callable[[int, int, int], None] | None = None,
) -> dict:
    """Draw `samples_per_prompt` images for each of `training_tasks(num_prompts, seed)` with `pipeline`'s
    defaults, score them with the world detector, and write min(right, wrong) disjoint (right, wrong) pairs per
    prompt as preencoded rows (`tokens` chosen, `rejected_tokens` rejected) under `output`.

    Image j of prompt i is drawn with the generator seeded `1_000_000 * seed + j * num_prompts + i`. Returns the
    index, whose `preference_pairs` entry counts prompts, images drawn right and pairs per task type.
    """
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    if samples_per_prompt < 2:
        raise ValueError(f"samples_per_prompt must be >= 2 to form pairs, got {samples_per_prompt}")
    side, writer, micro = _open_writer(pipeline, output)
    tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder

    tasks = training_tasks(num_prompts, seed)
    prompts, right, pairs = Counter(), Counter(), Counter()
    start = time.perf_counter()
    for first, chunk, tokens, good_rows in _draws(pipeline, tasks, seed, samples_per_prompt, batch_size, side):
        chosen, rejected, captions = [], [], []
        for i, (task, good) in enumerate(zip(chunk, good_rows, strict=True)):
            bad = [r for r in range(i * samples_per_prompt, (i + 1) * samples_per_prompt) if r not in good]
            prompts[task.task_type] += 1
            right[task.task_type] += len(good)
            pairs[task.task_type] += min(len(good), len(bad))
            for g, b in zip(good, bad, strict=False):  # min(right, wrong) disjoint pairs
                chosen.append(g)
                rejected.append(b)
                captions.append(task.text)
        if captions:
            states, pooled = _encode_text(tokenizer, text_encoder, captions)
            writer.add({
                "tokens": tokens[chosen].to(torch.int16).cpu(),
                "rejected_tokens": tokens[rejected].to(torch.int16).cpu(),
                "micro_conds": micro.expand(len(captions), 5).clone(),
                "text_states": states, "pooled": pooled,
            }, captions)
        if progress is not None:
            progress(first + len(chunk), len(tasks), sum(pairs.values()))
    states, pooled = _encode_text(tokenizer, text_encoder, [""])
    writer.meta["preference_pairs"] = {
        "prompts": dict(prompts), "right": dict(right), "pairs": dict(pairs), "seed": seed,
        "samples_per_prompt": samples_per_prompt, "seconds": round(time.perf_counter() - start, 1),
    }
    writer.close({"text_states": states.float(), "pooled": pooled.float()})
    return dict(writer.meta, count=writer.count)
