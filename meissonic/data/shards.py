"""Preencoded shards: VQ token grids, micro-conditions and text embeddings (or token ids) in safetensors
files.

Layout of a preencoded folder: `preencoded.json` (what was encoded, with what, and the shard list),
`shard-NNNNN.safetensors` with row-aligned tensors (`tokens` (N, h, w) int16/int32, `micro_conds` (N, 5),
then `text_states` (N, L, D) and `pooled` (N, P) or `input_ids` (N, L); optionally `token_targets` (N,) uint8,
written by `concatenate` and read by guidance distillation), `captions-NNNNN.jsonl`, and
`empty.safetensors` with the empty prompt's encoding. Each file is written to a temporary name, then renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_FILE = "preencoded.json"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


class ShardWriter:
    """Accumulates encoded rows and writes a shard every `shard_size` rows; `close()` writes the index."""

    def __init__(self, folder: str | Path, meta: dict, shard_size: int = 4096):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta, self.shard_size = dict(meta), shard_size
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.captions: list[str] = []
        self.shards: list[dict] = []
        self.count = 0

    def add(self, tensors: dict[str, torch.Tensor], captions: list[str]) -> None:
        for key, value in tensors.items():
            self.rows.setdefault(key, []).append(value.detach().cpu())
        self.captions.extend(captions)
        if len(self.captions) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.captions:
            return
        name = f"shard-{len(self.shards):05d}"
        _atomic_save({k: torch.cat(v) for k, v in self.rows.items()}, self.folder / f"{name}.safetensors")
        (self.folder / f"captions-{len(self.shards):05d}.jsonl").write_text(
            "".join(json.dumps(c) + "\n" for c in self.captions)
        )
        self.shards.append({"file": f"{name}.safetensors", "count": len(self.captions)})
        self.count += len(self.captions)
        self.rows, self.captions = {}, []

    def close(self, empty: dict[str, torch.Tensor] | None = None) -> Path:
        self.flush()
        if empty:
            _atomic_save({k: v.detach().cpu() for k, v in empty.items()}, self.folder / "empty.safetensors")
        index = dict(self.meta, count=self.count, shards=self.shards)
        tmp = self.folder / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, self.folder / INDEX_FILE)
        return self.folder / INDEX_FILE


class PreencodedSource:
    """Random access to the rows of a preencoded folder; shards are memory-mapped on first use."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.folder} is not a preencoded folder (no {INDEX_FILE})")
        self.meta = json.loads(path.read_text())
        self.blocks = [s["count"] for s in self.meta["shards"]]
        self._starts = [0]
        for size in self.blocks:
            self._starts.append(self._starts[-1] + size)
        self._handles: dict[int, object] = {}
        if self._starts[-1] == 0:
            raise ValueError(f"preencoded dataset {self.folder} holds no record")

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self):  # safetensors handles do not pickle; reopen in each worker
        return {k: v for k, v in self.__dict__.items() if k != "_handles"} | {"_handles": {}}

    def read(self, index: int) -> dict[str, torch.Tensor]:
        import bisect

        shard = bisect.bisect_right(self._starts, index) - 1
        row = index - self._starts[shard]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.folder / self.meta["shards"][shard]["file"]), "pt")
        handle = self._handles[shard]
        return {key: handle.get_slice(key)[row : row + 1][0] for key in handle.keys()}

    def captions(self) -> list[str]:
        """Every row's caption, in row order."""
        return [json.loads(line) for k in range(len(self.blocks))
                for line in (self.folder / f"captions-{k:05d}.jsonl").read_text().splitlines()]

    def empty(self) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self.folder / "empty.safetensors"
        return load_file(str(path)) if path.is_file() else None


ENCODING_KEYS = ("resolution", "token_grid", "codebook_size", "text", "text_length", "text_dim", "pooled_dim")


def concatenate(out: str | Path, folders: list[str | Path], token_targets: list[bool]) -> int:
    """Write the rows of the preencoded `folders`, in order, to the preencoded folder `out`, each with its folder's
    `token_targets` flag (guidance distillation: flagged rows learn their own tokens). The folders must have been
    encoded alike; the first one's empty prompt is kept. Returns the number of rows."""
    sources = [PreencodedSource(folder) for folder in folders]
    if len(token_targets) != len(sources):
        raise ValueError(f"one token_targets flag per folder: {len(sources)} folders, {len(token_targets)} flags")
    for source in sources[1:]:
        if any(source.meta.get(k) != sources[0].meta.get(k) for k in ENCODING_KEYS):
            raise ValueError(f"{source.folder} and {sources[0].folder} were not encoded alike")
    writer = ShardWriter(out, {k: v for k, v in sources[0].meta.items() if k not in ("count", "shards", "skipped")})
    for source, flag in zip(sources, token_targets, strict=True):
        mark = torch.tensor([int(flag)], dtype=torch.uint8)
        for i, text in enumerate(source.captions()):
            writer.add({key: value[None] for key, value in source.read(i).items()} | {"token_targets": mark}, [text])
    writer.close(sources[0].empty())
    return writer.count
