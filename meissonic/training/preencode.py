"""Preencoding: run the frozen VQ and text encoder once over a dataset and write token/embedding shards."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import ImageTextDataset, ShardWriter, open_source
from .train import encode_ids, tokenize, vq_downsample_factor, vq_encode


def shard_meta(resolution: int, grid: int, codes: int, text: str, tokenizer, text_encoder) -> dict:
    """What a preencoded folder's index records about its rows (`text`: "embeddings" or "ids")."""
    return {
        "version": 1,
        "resolution": resolution,
        "token_grid": [grid, grid],
        "codebook_size": codes,
        "text": text,
        "text_length": tokenize(tokenizer, text_encoder, [""]).shape[1],
        "text_dim": text_encoder.config.hidden_size,
        "pooled_dim": text_encoder.config.projection_dim,
    }


@torch.no_grad()
def preencode(
    dataset: ImageTextDataset,
    output: str | Path,
    vqvae,
    tokenizer,
    text_encoder,
    text: str = "embeddings",
    batch_size: int = 16,
    crops: int = 1,
    shard_size: int = 4096,
    states_dtype: torch.dtype = torch.bfloat16,
    progress: bool = True,
    limit: int | None = None,
) -> dict:
    """Encode every record (`crops` random crops each) into shards under `output`.

    `text="embeddings"` stores the text states and pooled text (frozen text encoder); `text="ids"` stores the
    token ids only (the text encoder trains). `limit` encodes only the first records. Corrupt records are skipped
    and counted. Returns the index.
    """
    if text not in ("embeddings", "ids"):
        raise ValueError(f"text must be 'embeddings' or 'ids', got {text!r}")
    device = next(vqvae.parameters()).device
    factor = vq_downsample_factor(vqvae)
    grid = dataset.resolution // factor
    codes = vqvae.config.num_vq_embeddings
    meta = shard_meta(dataset.resolution, grid, codes, text, tokenizer, text_encoder)
    writer = ShardWriter(output, meta, shard_size)
    token_dtype = torch.int16 if codes <= 2**15 else torch.int32
    skipped = 0
    items: list[dict] = []

    def flush() -> None:
        pixels = torch.stack([i["pixels"] for i in items]).to(device)
        captions = [i["caption"] for i in items]
        ids = tokenize(tokenizer, text_encoder, captions)
        rows = {
            "tokens": vq_encode(vqvae, pixels).to(token_dtype).cpu(),
            "micro_conds": torch.stack([i["micro_conds"] for i in items]),
        }
        if text == "ids":
            rows["input_ids"] = ids.to(torch.int32)
        else:
            states, pooled = encode_ids(text_encoder, ids.to(device))
            rows["text_states"], rows["pooled"] = states.to(states_dtype).cpu(), pooled.float().cpu()
        writer.add(rows, captions)
        items.clear()

    records = min(len(dataset), limit) if limit else len(dataset)
    for position in tqdm(range(records * crops), desc="preencode", unit="img", disable=not progress):
        try:
            items.append(dataset.load(position % records, position))
        except Exception:  # noqa: BLE001 - unreadable records are counted, never fatal
            skipped += 1
            continue
        if len(items) == batch_size:
            flush()
    if items:
        flush()
    if writer.count + len(writer.captions) == 0:
        raise ValueError("no usable record: every image failed to decode")
    empty: dict[str, torch.Tensor] = {"input_ids": tokenize(tokenizer, text_encoder, [""]).to(torch.int32)}
    if text == "embeddings":
        states, pooled = encode_ids(text_encoder, empty["input_ids"].long().to(device))
        empty = {"text_states": states.float().cpu(), "pooled": pooled.float().cpu()}
    writer.meta["skipped"] = skipped
    writer.close(empty)
    return dict(writer.meta, count=writer.count)


def open_raw_dataset(path: str | Path, data_config, seed: int) -> ImageTextDataset:
    source = open_source(
        path,
        data_config.format if data_config.format != "preencoded" else "auto",
        data_config.image_column,
        data_config.caption_column,
        data_config.score_column,
        data_config.hf_split,
    )
    return ImageTextDataset(
        source, data_config.resolution, seed, data_config.random_crop, data_config.default_score
    )
