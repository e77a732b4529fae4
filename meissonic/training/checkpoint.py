"""Crash-safe checkpoints: each is written into a temporary folder, flushed to disk and renamed into
place, so a killed run leaves complete checkpoints only (plus a temporary folder that the next start
deletes).

Tensors (model, EMA, RNG) are safetensors. Optimizer and LR-scheduler states use `torch.save`, only ever
for files this program wrote into its own run folder, and are read back with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
STATE_FILE = "state.json"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def remove_partial(run_dir: str | Path) -> None:
    """Delete temporary folders left by a run killed while writing a checkpoint."""
    root = checkpoints_root(run_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".tmp-"):
                shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    write: Callable[[Path], None],
    keep_last: int = 3,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Create `checkpoints/step-NNNNNNNN` atomically: `write(tmp_folder)` fills a temporary folder (every
    process
    may write into it), which the main process then flushes and renames; older checkpoints beyond `keep_last`
    are deleted afterwards."""
    root = checkpoints_root(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    write(tmp)
    barrier()
    if is_main:
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if keep_last > 0:
            for _, old in list_checkpoints(run_dir)[:-keep_last]:
                doomed = root / f".tmp-delete-{old.name}"
                os.replace(old, doomed)  # atomic: a kill during the deletion leaves only a temporary folder
                shutil.rmtree(doomed, ignore_errors=True)
    barrier()
    return final


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_object(obj, path: Path) -> None:
    """Optimizer / scheduler state (tensors and plain values) of this run."""
    torch.save(obj, path)


def load_object(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Global RNG states: torch's as a tensor, Python's and NumPy's as JSON-able values."""
    np_state = np.random.get_state()
    return (
        {"torch": torch.get_rng_state()},
        {
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        },
    )


def set_rng_state(tensors: dict[str, torch.Tensor], values: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    version, state, gauss = values["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, *rest = values["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def write_json(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
