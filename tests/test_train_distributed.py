"""`accelerate launch --num_processes 2 --cpu` (gloo): ranks stay in sync and follow the same loss curve
as one
process with the same global batch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_helpers import tiny_train_config, write_config, write_imagefolder, write_tiny_vq

from meissonic.training import checkpoint as ckpt
from meissonic.training.tiny import write_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys, torch
from meissonic.training.config import load_config
from meissonic.training.train import Trainer
trainer = Trainer(load_config(sys.argv[1]))
trainer.run(export=False)
flat = torch.cat([p.detach().flatten() for p in trainer.transformer.parameters()])[None]
every = trainer.accelerator.gather(flat)
trainer.close()
if trainer.accelerator.is_main_process:  # as `meissonic train` asks it, after close()
    spread = (every - every[0]).abs().max().item()
    closed = not torch.distributed.is_initialized()
    json.dump({"world": trainer.world, "rank_spread": spread, "closed": closed}, open(sys.argv[2], "w"))
"""


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "log.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_two_processes_match_one_process(tmp_path):
    data, vq = write_imagefolder(tmp_path / "data", count=16), write_tiny_vq(tmp_path / "vq")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    results = {}
    for world, batch in ((1, 4), (2, 2)):
        folder = tmp_path / f"w{world}"
        config = tiny_train_config(
            folder,
            data,
            vq,
            **{
                "max_steps": 8,
                "batch_size": batch,
                "grad_accum": 2,
                "checkpoint.every": 8,
                "mixed_precision": "no",
            },
        )
        path = write_config(tmp_path / f"w{world}.yaml", config)
        # Several CPU processes: accelerate's torchrun launcher (`--multi_gpu`) on a machine without GPUs
        # starts gloo ranks; `--cpu` alone would need mpirun.
        launch = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(world),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        launch += ["--multi_gpu", "--main_process_port", "29517"] if world > 1 else ["--cpu"]
        done = subprocess.run(
            [*launch, str(script), str(path), str(folder / "out.json")],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout[-10000:] + "\n" + done.stderr[-20000:]
        results[world] = json.loads((folder / "out.json").read_text())
    assert results[2]["world"] == 2 and results[1]["world"] == 1
    assert results[2]["rank_spread"] == 0.0
    assert results[2]["closed"], "the process group is still open after Trainer.close()"
    one, two = losses(tmp_path / "w1" / "run"), losses(tmp_path / "w2" / "run")
    assert len(one) == len(two) == 8
    assert one == pytest.approx(two, rel=1e-4, abs=1e-4)
    a = load_file(str(ckpt.latest_checkpoint(tmp_path / "w1" / "run") / "model.safetensors"))
    b = load_file(str(ckpt.latest_checkpoint(tmp_path / "w2" / "run") / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3, msg=key)


def test_ranks_rewriting_the_tokenizer_never_expose_a_partial_file(tmp_path):
    """Every rank writes the tiny tokenizer into the shared run folder while the others may already be reading
    it (the cause of a rank crashing at start-up in CI): a reader must always see a complete file."""
    folder = write_tiny_tokenizer(tmp_path / "tokenizer")
    expected = {name: (folder / name).read_text() for name in ("vocab.json", "merges.txt")}
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            write_tiny_tokenizer(folder)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        torn = [name for _ in range(2000) for name in expected if (folder / name).read_text() != expected[name]]
    finally:
        stop.set()
        writer.join()
    assert not torn, f"{len(torn)} reads saw a partly written file, e.g. {torn[0]}"
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
