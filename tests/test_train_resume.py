"""Crash safety: a run killed with SIGKILL and resumed ends with the same weights as an uninterrupted
run, and no
checkpoint on disk is ever partial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_helpers import tiny_train_config, write_config, write_imagefolder, write_tiny_vq

from meissonic.training import checkpoint as ckpt

CHECKPOINT_FILES = {
    "model.safetensors",
    "ema.safetensors",
    "optimizer.pt",
    "lr_scheduler.pt",
    "rng.safetensors",
    "state.json",
}
REPO = Path(__file__).resolve().parents[1]


def assert_complete(run_dir: Path) -> None:
    for _, folder in ckpt.list_checkpoints(run_dir):
        assert {p.name for p in folder.iterdir()} == CHECKPOINT_FILES, folder
        load_file(str(folder / "model.safetensors"))
        ckpt.load_object(folder / "optimizer.pt")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    data, vq = write_imagefolder(tmp_path / "data", count=16), write_tiny_vq(tmp_path / "vq")
    settings = {
        "max_steps": 30,
        "checkpoint.every": 2,
        "checkpoint.keep_last": 3,
        "ema.enabled": True,
        "ema.decay": 0.9,
        "optim.schedule": "cosine",
        "objective.cfg_dropout": 0.3,
    }
    # Every run is a fresh process: the same conditions for the reference, the killed and the resumed run.
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    entry = "import sys; from meissonic.interfaces.cli import main; sys.exit(main(sys.argv[1:]))"
    cli = [sys.executable, "-c", entry]
    reference = write_config(tmp_path / "a.yaml", tiny_train_config(tmp_path / "a", data, vq, **settings))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run([*cli, "train", "--config", str(reference), "--no-export"], env=env, check=True, **quiet)

    config_path = write_config(tmp_path / "b.yaml", tiny_train_config(tmp_path / "b", data, vq, **settings))
    run_b = tmp_path / "b" / "run"
    process = subprocess.Popen([*cli, "train", "--config", str(config_path), "--no-export"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        found = ckpt.list_checkpoints(run_b)
        if found and found[-1][0] >= 10:
            process.send_signal(signal.SIGKILL)
            break
        if process.poll() is not None:
            break
        time.sleep(0.002)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert ckpt.latest_checkpoint(run_b) is not None
    assert_complete(run_b)

    resume = [*cli, "train", "--config", str(config_path), "--resume", "--no-export"]
    subprocess.run(resume, env=env, check=True, **quiet)
    assert_complete(run_b)
    assert not any(p.name.startswith(".tmp-") for p in (run_b / "checkpoints").iterdir())
    final_a = ckpt.latest_checkpoint(tmp_path / "a" / "run")
    final_b = ckpt.latest_checkpoint(run_b)
    assert final_a.name == final_b.name == "step-00000030"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(final_a / name)), load_file(str(final_b / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=f"{name}:{key}")


def test_interrupted_checkpoint_write_leaves_no_partial_folder(tmp_path):
    def good(folder: Path) -> None:
        (folder / "state.json").write_text("{}")

    def dies(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    ckpt.write_checkpoint(tmp_path, 1, good)
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_checkpoint(tmp_path, 2, dies)
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    ckpt.remove_partial(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    for step in range(2, 6):
        ckpt.write_checkpoint(tmp_path, step, good, keep_last=2)
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [4, 5]
