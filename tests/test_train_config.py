"""Bad input stops before training with one clear error line: unknown keys, impossible resolutions, missing or
unusable datasets, resuming a folder written by another config."""

from __future__ import annotations

import pytest
from test_train_helpers import tiny_train_config, write_config, write_imagefolder, write_tiny_vq

from meissonic.interfaces.cli import main
from meissonic.training.config import TrainConfig, VQTrainConfig, load_config


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("config")
    return write_imagefolder(root / "data", count=6), write_tiny_vq(root / "vq")


def fails(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_key_names_key_and_file(tmp_path, assets, capsys):
    config = tiny_train_config(tmp_path, *assets, **{"optim.learning_rate": 1e-4})
    path = write_config(tmp_path / "bad.yaml", config)
    fails(capsys, ["train", "--config", str(path)], "unknown key 'optim.learning_rate'", str(path))
    with pytest.raises(ValueError, match="must be an integer"):
        load_config(write_config(tmp_path / "t.yaml", {"max_steps": "many"}), TrainConfig)
    with pytest.raises(ValueError, match="unknown key 'loss.perceptual'"):
        load_config(write_config(tmp_path / "v.yaml", {"loss": {"perceptual": 1.0}}), VQTrainConfig)


def test_resolution_the_model_cannot_take(tmp_path, assets, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_train_config(tmp_path, *assets, **{"data.resolution": 60}))
    fails(capsys, ["train", "--config", str(path)], "resolution 60", "multiple of 8")
    config = tiny_train_config(
        tmp_path,
        *assets,
        **{"data.resolution": 24, "model.transformer.downsample": True, "model.transformer.upsample": True},
    )
    fails(capsys, ["train", "--config", str(write_config(tmp_path / "d.yaml", config))], "multiple of 16")


def test_missing_or_unusable_dataset(tmp_path, assets, capsys):
    config = tiny_train_config(tmp_path, tmp_path / "nowhere", assets[1])
    fails(capsys, ["train", "--config", str(write_config(tmp_path / "a.yaml", config))], "does not exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    for n in range(3):
        (broken / f"{n}.png").write_bytes(b"garbage")
    config = tiny_train_config(tmp_path, broken, assets[1])
    fails(capsys, ["train", "--config", str(write_config(tmp_path / "b.yaml", config))], "no usable record")


def test_resume_from_another_config(tmp_path, assets, capsys):
    config = tiny_train_config(tmp_path, *assets, **{"max_steps": 2, "checkpoint.every": 2})
    path = write_config(tmp_path / "a.yaml", config)
    assert main(["train", "--config", str(path), "--no-export"]) == 0
    capsys.readouterr()
    fails(capsys, ["train", "--config", str(path), "--no-export"], "already has checkpoints")
    config["optim"]["lr"] = 5e-4
    changed = write_config(tmp_path / "b.yaml", config)
    fails(capsys, ["train", "--config", str(changed), "--resume"], "different config")
    config["optim"]["lr"] = 1e-3
    config["max_steps"] = 3  # longer runs of the same config may resume
    assert (
        main(["train", "--config", str(write_config(tmp_path / "c.yaml", config)), "--resume", "--no-export"])
        == 0
    )
