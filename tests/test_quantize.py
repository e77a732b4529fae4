"""Quantization: int8 / fp8 weight-only and SCQ-style W4A8 with per-CFG-half activation scales."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from meissonic import MeissonicPipeline
from meissonic.models import MeissonicTransformer2DModel
from meissonic.models.quantize import (
    Int8Linear,
    W4A8Linear,
    activation_layout,
    fp8_supported,
    pack_int4,
    quantize_model,
    unpack_int4,
    weight_bytes,
)
from meissonic.testing import build_tiny_pipeline_folder

# Stated tolerance of quantized logits against the same model in bf16 on the parity fixture:
# relative L2 error and maximum absolute error (the logits' std is about 0.42; bf16 itself is 0.03 off fp32).
TOLERANCE = {"int8": (0.06, 0.15), "fp8": (0.20, 0.40)}


def parity_logits(model, io):
    with torch.no_grad():
        return model(io["tokens"], io["encoder_hidden_states"], io["pooled_projections"], io["timestep"],
                     io["micro_conds"]).float()


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_weight_only_logits_stay_close_to_bf16_and_memory_drops(reference_dir, mode):
    if mode == "fp8" and not fp8_supported():
        pytest.skip("torch lacks float8_e4m3fn")
    io = load_file(reference_dir / "parity" / "io.safetensors")
    model = MeissonicTransformer2DModel.from_pretrained(reference_dir / "parity" / "transformer",
                                                       torch_dtype=torch.bfloat16).eval()
    reference = parity_logits(model, io)
    report = quantize_model(model, mode)
    logits = parity_logits(model, io)
    relative, largest = TOLERANCE[mode]
    assert ((logits - reference).norm() / reference.norm()).item() < relative
    assert (logits - reference).abs().max().item() < largest
    assert report["bytes_before"] / report["bytes_after"] >= 1.8
    assert report["bytes_after"] == weight_bytes(model)
    assert not any(type(m) is nn.Linear for m in model.modules())


def test_int8_layer_keeps_weight_and_bias_readable():
    linear = nn.Linear(64, 16)
    quantized = Int8Linear(linear)
    assert quantized.qweight.dtype == torch.int8 and quantized.weight.shape == (16, 64)
    step = linear.weight.abs().amax(1, keepdim=True) / 127
    assert ((quantized.weight - linear.weight).abs() <= step / 2 + 1e-6).all()
    x = torch.randn(3, 64)
    torch.testing.assert_close(quantized(x), nn.functional.linear(x, quantized.weight, linear.bias))


def test_int4_packing_round_trips():
    values = torch.randint(-8, 8, (5, 256), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    packed = pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 128)
    assert torch.equal(unpack_int4(packed), values)


def test_w4a8_groups_and_separate_activation_scales_per_cfg_half():
    linear = nn.Linear(256, 8)
    layer = W4A8Linear(linear, group_size=128)
    assert layer.scale.shape == (8, 2) and layer.qweight.numel() == 8 * 128
    groups = linear.weight.detach().unflatten(1, (2, 128))
    step = groups.abs().amax(-1, keepdim=True) / 7
    assert ((layer.weight.unflatten(1, (2, 128)) - groups).abs() <= step / 2 + 1e-6).all()
    layer.act_scale.copy_(torch.tensor([1.0, 0.01]))  # uncond half coarse, cond half fine
    x = torch.full((2, 256), 0.3)
    layer.layout.current = "split"
    quantized = layer.quantize_input(x)
    assert quantized[0, 0].item() == pytest.approx(0.0) and quantized[1, 0].item() == pytest.approx(0.3)
    layer.layout.current = "uncond"
    assert layer.quantize_input(x[:1])[0, 0].item() == pytest.approx(0.0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("tinyq") / "pipe")


def test_pipeline_quantize_w4a8_calibrates_both_halves_and_generates(tiny_folder):
    pipe = MeissonicPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="calibration_prompts"):
        pipe.quantize("w4a8")
    report = pipe.quantize("w4a8", calibration_prompts=["a red circle", "two blue squares", "x"], calibration_steps=2,
                           batch_size=2)
    assert report["calibration_prompts"] == 3
    assert len(report["activation_calibrated"]) == report["layers"]  # every Linear is called as a module
    layers = {n: m for n, m in pipe.transformer.named_modules() if isinstance(m, W4A8Linear)}
    scales = torch.stack([layers[n].act_scale for n in report["activation_calibrated"]])
    assert torch.isfinite(scales).all() and (scales > 0).all()
    assert (scales[:, 0] != scales[:, 1]).any()  # the unconditional and conditional halves differ
    assert report["bytes_before"] / report["bytes_after"] > 2
    out = pipe("a", num_inference_steps=3, zigzag=True, output_type="tokens",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 8, 8) and (out < 64).all()
    with activation_layout(pipe.transformer, "split"):
        assert pipe.transformer._activation_layout.current == "split"
    assert pipe.transformer._activation_layout.current == "cond"
    with pytest.raises(ValueError, match="already quantized"):
        pipe.quantize("int8")


def test_pipeline_quantize_int8_generates(tiny_folder):
    pipe = MeissonicPipeline.from_pretrained(tiny_folder, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    report = pipe.quantize("int8")
    assert report["layers"] == sum(isinstance(m, Int8Linear) for m in pipe.transformer.modules())
    out = pipe("a", num_inference_steps=2, output_type="tokens", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 8, 8)
    with pytest.raises(ValueError, match="mode"):
        MeissonicPipeline.from_pretrained(tiny_folder).quantize("int3")
