"""End to end: preencode, train a tiny model a few hundred steps on a few dozen images until its
masked-token loss
is well below the uniform guess, export the released layout and generate through the pipeline."""

from __future__ import annotations

import csv
import math

from test_train_helpers import tiny_train_config, write_config, write_imagefolder, write_tiny_vq

from meissonic.data import INDEX_FILE, PreencodedSource
from meissonic.interfaces.cli import main


def test_tiny_model_learns_exports_and_generates(tmp_path):
    data, vq = write_imagefolder(tmp_path / "data", count=36), write_tiny_vq(tmp_path / "vq", codes=64)
    config = tiny_train_config(
        tmp_path,
        data,
        vq,
        **{
            "max_steps": 200,
            "batch_size": 8,
            "optim.lr": 2e-3,
            "optim.warmup_steps": 20,
            "optim.schedule": "cosine",
            "objective.cfg_dropout": 0.1,
            "ema.enabled": True,
            "ema.decay": 0.99,
            "log.every": 1,
            "checkpoint.every": 200,
            "data.random_crop": False,
            "model.transformer.num_single_layers": 2,
            "model.transformer.attention_head_dim": 32,
            "model.transformer.axes_dims_rope": [8, 12, 12],
            "model.transformer.pooled_projection_dim": 64,
            "model.text_encoder.projection_dim": 64,
        },
    )
    raw = write_config(tmp_path / "raw.yaml", config)
    encoded = tmp_path / "encoded"
    assert main(["preencode", "--config", str(raw), "--output", str(encoded), "--batch-size", "12"]) == 0
    assert (encoded / INDEX_FILE).is_file() and len(PreencodedSource(encoded)) == 36

    config["data"]["path"] = str(encoded)
    path = write_config(tmp_path / "train.yaml", config)
    assert main(["train", "--config", str(path)]) == 0
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    uniform = math.log(64)
    final = sum(float(r["loss"]) for r in rows[-10:]) / 10
    assert float(rows[0]["loss"]) > 0.8 * uniform
    assert final < 0.5 * uniform, (final, uniform)
    assert float(rows[-1]["tokens_per_s"]) > 0

    from meissonic.pipelines import MeissonicPipeline

    pipe = MeissonicPipeline.from_pretrained(tmp_path / "run" / "export")
    import torch

    images = pipe(
        prompt=["a red square", "a blue circle"],
        height=64,
        width=64,
        num_inference_steps=6,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pil",
    ).images
    assert len(images) == 2 and images[0].size == (64, 64)
