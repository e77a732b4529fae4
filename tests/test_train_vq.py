"""VQ tokenizer training: losses go down, held-out PSNR/SSIM/usage are reported, dead codes restart, the
export
loads as a diffusers VQModel."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_helpers import write_config, write_imagefolder

from meissonic.interfaces.cli import main
from meissonic.training.config import VQTrainConfig, load_config
from meissonic.training.train_vq import VQTrainer, psnr, ssim


def vq_config(tmp_path, data, **changes) -> dict:
    config = {
        "run_dir": str(tmp_path / "vq"),
        "max_steps": 30,
        "batch_size": 4,
        "mixed_precision": "no",
        "vqvae": {"downsample_factor": 8, "codes": 32, "channels": 16},
        "data": {"path": str(data), "resolution": 32},
        "val_images": 4,
        "eval_every": 15,
        "dead_code_every": 10,
        "optim": {"lr": 2e-3},
        "loss": {"discriminator": 0.05, "discriminator_channels": 16, "discriminator_layers": 2},
        "checkpoint": {"every": 15},
        "log": {"every": 1, "progress": False, "tensorboard": False},
    }
    config.update(changes)
    return config


def test_metrics():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert psnr(x, x).min() > 90
    assert ssim(x, torch.rand(2, 3, 32, 32)).max() < 0.2


def test_train_vq_end_to_end(tmp_path):
    data = write_imagefolder(tmp_path / "data", count=20, size=32)
    path = write_config(tmp_path / "vq.yaml", vq_config(tmp_path, data))
    assert main(["train-vq", "--config", str(path)]) == 0
    metrics = json.loads((tmp_path / "vq" / "metrics.json").read_text())
    assert {"psnr", "ssim", "codebook_usage", "perplexity"} <= set(metrics)
    assert metrics["psnr"] > 12 and 0 < metrics["codebook_usage"] <= 1
    rows = (tmp_path / "vq" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    l1 = [float(r.split(",")[header.index("l1")]) for r in rows[1:]]
    assert sum(l1[-5:]) < sum(l1[:5])

    from diffusers import VQModel

    model = VQModel.from_pretrained(str(tmp_path / "vq" / "export" / "vqvae"))
    assert model.config.num_vq_embeddings == 32


def test_dead_codes_are_restarted(tmp_path):
    data = write_imagefolder(tmp_path / "data", count=12, size=32)
    trainer = VQTrainer(
        load_config(write_config(tmp_path / "vq.yaml", vq_config(tmp_path, data)), VQTrainConfig)
    )
    before = trainer.vqvae.quantize.embedding.weight.detach().clone()
    trainer.usage[:] = 0
    trainer.usage[:4] = 5  # codes 0-3 used, all others dead
    latents = torch.randn(2, before.shape[1], 4, 4)
    assert trainer.restart_dead_codes(latents) == before.shape[0] - 4
    after = trainer.vqvae.quantize.embedding.weight.detach()
    assert torch.equal(after[:4], before[:4]) and not torch.equal(after[4:], before[4:])


def test_decoder_only_keeps_the_tokens(tmp_path):
    """Fine-tuning only the decoder changes reconstructions but not a single token id of the VQ it starts from."""
    data = write_imagefolder(tmp_path / "data", count=12, size=32)
    first = vq_config(tmp_path, data, max_steps=4, eval_every=0)
    assert main(["train-vq", "--config", str(write_config(tmp_path / "a.yaml", first))]) == 0
    start = str(tmp_path / "vq" / "export" / "vqvae")
    second = vq_config(tmp_path, data, run_dir=str(tmp_path / "dec"), vqvae=start, decoder_only=True,
                       max_steps=6, eval_every=0, loss={"discriminator": 0.0})
    assert main(["train-vq", "--config", str(write_config(tmp_path / "b.yaml", second))]) == 0

    from diffusers import VQModel

    before, after = VQModel.from_pretrained(start), VQModel.from_pretrained(str(tmp_path / "dec" / "export" / "vqvae"))
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in old if not k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))


def test_decoder_only_needs_a_vq_folder(tmp_path):
    data = write_imagefolder(tmp_path / "data", count=8, size=32)
    config = load_config(write_config(tmp_path / "vq.yaml", vq_config(tmp_path, data, decoder_only=True)),
                         VQTrainConfig)
    with pytest.raises(ValueError, match="decoder_only"):
        VQTrainer(config)
