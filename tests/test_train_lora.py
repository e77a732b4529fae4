"""LoRA fine-tuning, validation grids and the exported pipeline's settings."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_train_helpers import tiny_train_config, write_config, write_imagefolder, write_tiny_vq

from meissonic.pipelines import MeissonicPipeline
from meissonic.sampling.options import SamplerOptions
from meissonic.training.config import load_config
from meissonic.training.train import Trainer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return write_imagefolder(root / "data", count=8), write_tiny_vq(root / "vq")


def test_lora_trains_only_adapters_and_exports_merged_weights(assets, tmp_path):
    data, vq = assets
    base = tiny_train_config(tmp_path / "base", data, vq, max_steps=2)
    base_trainer = Trainer(load_config(write_config(tmp_path / "base.yaml", base)))
    base_trainer.run()
    base_export = tmp_path / "base" / "run" / "export"
    before = MeissonicPipeline.from_pretrained(base_export).transformer.state_dict()

    config = tiny_train_config(tmp_path / "lora", data, vq, max_steps=4, **{
        "model.init_from": str(base_export), "model.text_encoder": str(base_export / "text_encoder"),
        "lora.enabled": True, "lora.r": 4, "lora.alpha": 8, "optim.lr": 1e-2,
    })
    trainer = Trainer(load_config(write_config(tmp_path / "lora.yaml", config)))
    trainable = {n for n, p in trainer.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.run()

    after = MeissonicPipeline.from_pretrained(tmp_path / "lora" / "run" / "export").transformer.state_dict()
    assert set(after) == set(before)  # merged: no adapter keys left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v") for k in changed), sorted(changed)


def test_validation_grid_and_default_resolution(assets, tmp_path):
    data, vq = assets
    config = tiny_train_config(tmp_path, data, vq, max_steps=2, **{
        "validation.every": 2, "validation.prompts": ["a red square", "a blue circle", "a green triangle"],
        "validation.num_inference_steps": 2,
    })
    Trainer(load_config(write_config(tmp_path / "v.yaml", config))).run()
    grid = Image.open(tmp_path / "run" / "samples" / "step-00000002.png")
    assert grid.size == (128, 128)  # three 64 px images on a 2 x 2 grid
    assert grid.crop((64, 64, 128, 128)).getextrema() == ((0, 0), (0, 0), (0, 0))  # the empty fourth cell
    assert grid.crop((0, 0, 64, 64)).getextrema() != ((0, 0), (0, 0), (0, 0))
    index = json.loads((tmp_path / "run" / "export" / "model_index.json").read_text())
    assert index["default_resolution"] == 64


def test_export_samples_like_validation_and_fine_tunes_keep_their_defaults(assets, tmp_path):
    data, vq = assets
    base = tiny_train_config(tmp_path / "base", data, vq, max_steps=1, **{
        "validation.num_inference_steps": 3, "validation.guidance_scale": 2.5,
        "validation.sampler": "guidance_interval=0:0.5",
    })
    Trainer(load_config(write_config(tmp_path / "base.yaml", base))).run()
    base_export = tmp_path / "base" / "run" / "export"
    exported = MeissonicPipeline.from_pretrained(base_export)
    assert exported.sampling_defaults(None, None) == (3, 2.5)
    assert exported.default_sampler_options == SamplerOptions(guidance_interval=(0.0, 0.5))

    tuned = tiny_train_config(tmp_path / "tuned", data, vq, max_steps=1, **{
        "model": {"pretrained": str(base_export)}, "validation.num_inference_steps": 5,
        "validation.guidance_scale": 7.0, "validation.sampler": "token_temperature=0.5",
    })
    Trainer(load_config(write_config(tmp_path / "tuned.yaml", tuned))).run()
    index = json.loads((tmp_path / "tuned" / "run" / "export" / "model_index.json").read_text())
    assert (index["default_steps"], index["default_guidance_scale"]) == (3, 2.5)
    assert index["default_sampler"] == {"guidance_interval": [0.0, 0.5]}
    bad = {**tuned, "validation": {**tuned["validation"], "sampler": "guidance_interval=0.5:0.2"}}
    with pytest.raises(ValueError, match="validation.sampler: sampler option guidance_interval"):
        load_config(write_config(tmp_path / "bad.yaml", bad))
