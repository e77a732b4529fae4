"""Deterministic data order: sample position -> record index, a pure function of (seed, position).

The stream of positions 0, 1, 2, ... runs through epoch after epoch, each a fresh permutation seeded by
(seed, epoch). Training step s consumes positions [s * G, (s + 1) * G) for a global batch G, so the data
position of a run is its step and resuming needs no data-loader state.
"""

from __future__ import annotations

import numpy as np


class EpochOrder:
    """`mode` "full": one permutation of all records; "block": permute storage blocks (row groups, shards),
    then shuffle records within windows of `window` consecutive blocks (locality for large Parquet/tar
    data)."""

    def __init__(
        self, size: int, seed: int, mode: str = "full", blocks: list[int] | None = None, window: int = 4
    ):
        if size < 1:
            raise ValueError("no records to order")
        self.size, self.seed, self.mode, self.window = size, seed, mode, max(1, window)
        self.blocks = blocks if blocks and sum(blocks) == size else [size]
        self._cached: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        dtype = np.int64 if self.size >= 2**31 else np.int32
        if self.mode == "full" or len(self.blocks) == 1:
            perm = rng.permutation(self.size).astype(dtype)
        else:
            starts = np.concatenate([[0], np.cumsum(self.blocks)])
            chosen = rng.permutation(len(self.blocks))
            parts = []
            for w in range(0, len(chosen), self.window):
                ids = np.concatenate(
                    [np.arange(starts[b], starts[b + 1]) for b in chosen[w : w + self.window]]
                )
                parts.append(rng.permutation(ids))
            perm = np.concatenate(parts).astype(dtype)
        self._cached = (epoch, perm)
        return perm

    def index(self, position: int) -> int:
        return int(self.permutation(position // self.size)[position % self.size])


def batch_positions(step: int, micro: int, rank: int, world: int, batch: int, accum: int) -> list[int]:
    """Positions of micro-batch `micro` of process `rank` at optimizer step `step`."""
    start = ((step * accum + micro) * world + rank) * batch
    return list(range(start, start + batch))


class PositionBatches:
    """Batch sampler for a DataLoader: this process's position lists from `start_step` on, forever."""

    def __init__(self, start_step: int, batch: int, accum: int = 1, rank: int = 0, world: int = 1):
        self.start_step, self.batch, self.accum, self.rank, self.world = start_step, batch, accum, rank, world

    def __iter__(self):
        step = self.start_step
        while True:
            for micro in range(self.accum):
                yield batch_positions(step, micro, self.rank, self.world, self.batch, self.accum)
            step += 1
