"""Position-indexed datasets for training: item `p` is the p-th sample of the (seed-determined) stream.

`ImageTextDataset` decodes, resizes and crops raw records; `PreencodedDataset` serves preencoded rows. Both
derive every random choice from (seed, position), so any process can produce any sample and a resumed run
sees exactly the data an uninterrupted one would. Corrupt or unreadable records are skipped (the next record
in storage order is used) and counted in each item's `skipped` field, never raised.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .order import EpochOrder
from .shards import PreencodedSource
from .sources import Source
from .transforms import decode_image, resize_and_crop

MAX_SKIPS = 64


class ImageTextDataset(Dataset):
    def __init__(
        self,
        source: Source,
        resolution: int,
        seed: int = 0,
        random_crop: bool = True,
        default_score: float = 6.0,
        shuffle: str = "full",
        window: int = 4,
    ):
        self.source, self.resolution, self.seed = source, resolution, seed
        self.random_crop, self.default_score = random_crop, default_score
        self.order = EpochOrder(len(source), seed, shuffle, source.blocks, window)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int, position: int) -> dict:
        record = self.source.read(index)
        rng = np.random.default_rng([self.seed, position, 0xC0]) if self.random_crop else None
        pixels, (width, height, top, left) = resize_and_crop(decode_image(record.image), self.resolution, rng)
        score = self.default_score if record.score is None else record.score
        micro = torch.tensor([width, height, top, left, score], dtype=torch.float32)
        return {"pixels": pixels, "micro_conds": micro, "caption": record.caption}

    def __getitem__(self, position: int) -> dict:
        index = self.order.index(position)
        for skipped in range(min(MAX_SKIPS, len(self.source))):
            try:
                item = self.load((index + skipped) % len(self.source), position)
            except Exception:  # noqa: BLE001 - any unreadable record is skipped, never fatal
                continue
            item["skipped"] = skipped
            return item
        raise RuntimeError(
            f"{MAX_SKIPS} consecutive unreadable records near index {index}; is the dataset damaged?"
        )


class PreencodedDataset(Dataset):
    def __init__(self, source: PreencodedSource, seed: int = 0, shuffle: str = "full", window: int = 4):
        self.source = source
        self.order = EpochOrder(len(source), seed, shuffle, source.blocks, window)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, position: int) -> dict:
        item = self.source.read(self.order.index(position))
        item["skipped"] = 0
        return item


def first_usable(dataset: ImageTextDataset, limit: int = MAX_SKIPS) -> int | None:
    """Index of the first record that decodes among the first `limit`, or None: rejects unusable data up
    front."""
    for index in range(min(limit, len(dataset.source))):
        try:
            dataset.load(index, 0)
            return index
        except Exception:  # noqa: BLE001
            continue
    return None
