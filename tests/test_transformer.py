"""The transformer loads the released checkpoints' layout and matches the official implementation."""

import json

import pytest
import torch
from safetensors.torch import load_file

from meissonic.models import MeissonicTransformer2DModel


def released_config(reference_dir, name: str) -> dict:
    configs = json.loads((reference_dir / "configs.json").read_text())
    config = dict(configs["meissonic_1024"]["transformer/config.json"])
    if name == "monetico_512":
        config.update(downsample=False, upsample=False)
    return config


def read_tsv(path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def test_parity_with_official_logits(reference_dir):
    model = MeissonicTransformer2DModel.from_pretrained(reference_dir / "parity" / "transformer").eval()
    io = load_file(reference_dir / "parity" / "io.safetensors")
    with torch.no_grad():
        logits = model(io["tokens"], io["encoder_hidden_states"], io["pooled_projections"], io["timestep"],
                       io["micro_conds"])
    assert logits.shape == io["logits"].shape
    # SPEC section 11 asks for 1e-4. The official logits are themselves up to 1.005e-4 away from this forward
    # evaluated in float64 (mean 1.8e-5; float32 against float64 here: 1.7e-6), so on some CPUs one of the 8,192
    # logits lands just past 1e-4 (1.002e-4 seen). A relative term of 1e-4 absorbs that; a wrong layer or weight
    # layout moves the logits by 1e-2 or more, and the mean difference must stay at the reference's own level.
    torch.testing.assert_close(logits, io["logits"], atol=1e-4, rtol=1e-4)
    assert (logits - io["logits"]).abs().mean() < 5e-5


@pytest.mark.parametrize("name", ["meissonic_1024", "monetico_512"])
def test_released_state_dict_keys_and_shapes(reference_dir, name):
    expected = read_tsv(reference_dir / f"state_dict_{name}.tsv")
    with torch.device("meta"):
        model = MeissonicTransformer2DModel.from_config(released_config(reference_dir, name))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    # A state dict with exactly these keys and shapes loads strictly.
    state = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if name == "meissonic_1024":
        assert sum(v.numel() for v in model.parameters()) == 1_006_946_304


def tiny_model(**overrides) -> MeissonicTransformer2DModel:
    config = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                  joint_attention_dim=24, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6), vocab_size=40,
                  codebook_size=32, downsample=True, upsample=True)
    config.update(overrides)
    torch.manual_seed(0)
    return MeissonicTransformer2DModel(**config).eval()


def random_inputs(model, batch, height, width, text_len=7):
    cfg = model.config
    return (torch.randint(0, cfg.vocab_size, (batch, height, width)),
            torch.randn(batch, text_len, cfg.joint_attention_dim),
            torch.randn(batch, cfg.pooled_projection_dim),
            torch.randint(0, 12, (batch,)),
            torch.tensor([[256.0, 256, 0, 0, 6]]).expand(batch, 5))


@pytest.mark.parametrize("height,width", [(8, 8), (4, 12), (6, 2)])
def test_any_grid_multiple_of_the_stride(height, width):
    model = tiny_model()
    with torch.no_grad():
        logits = model(*random_inputs(model, 2, height, width))
    assert logits.shape == (2, 32, height, width)
    assert torch.isfinite(logits).all()


def test_odd_grid_with_compression_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="multiple of 2"):
        model(*random_inputs(model, 1, 5, 8))


def test_batch_items_are_independent():
    model = tiny_model()
    inputs = random_inputs(model, 3, 4, 6)
    with torch.no_grad():
        batched = model(*inputs)
        single = torch.cat([model(*(x[i:i + 1] for x in inputs)) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_rope_acts_on_image_positions():
    """Permuting the image tokens must not simply permute the logits: positions are encoded."""
    model = tiny_model(downsample=False, upsample=False)
    tokens, text, pooled, t, micro = random_inputs(model, 1, 4, 4)
    with torch.no_grad():
        logits = model(tokens, text, pooled, t, micro)
        flipped = model(tokens.flip(-1), text, pooled, t, micro).flip(-1)
    assert not torch.allclose(logits, flipped, atol=1e-4)


def test_bf16_forward_close_to_float32():
    model = tiny_model()
    inputs = random_inputs(model, 2, 4, 4)
    with torch.no_grad():
        reference = model(*inputs)
        low = model.to(torch.bfloat16)(*inputs)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_bf16_inference_gelu_stays_within_bf16_error():
    """bf16 CPU inference swaps the tanh-GELU for the exact one (faster there); the logits must stay as close to
    the float32 model as bf16 with the tanh-GELU (the path autograd takes) gets."""
    model = tiny_model(num_layers=2, num_single_layers=2)
    inputs = random_inputs(model, 4, 8, 8)
    with torch.no_grad():
        reference = model(*inputs)
    low = model.to(torch.bfloat16)
    with torch.no_grad():
        fast = low(*inputs).float()
    with torch.enable_grad():
        tanh = low(*inputs).float()
    assert not torch.equal(fast, tanh)  # the two paths differ
    error_fast, error_tanh = ((x - reference).abs().mean() for x in (fast, tanh))
    assert error_fast < 1.2 * error_tanh, (error_fast, error_tanh)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        inputs = random_inputs(model, 2, 4, 4)
        torch.manual_seed(1)
        model(*inputs).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].numel() == sum(p.numel() for p in tiny_model().parameters())
    torch.testing.assert_close(grads[0], grads[1])


def test_save_and_reload_roundtrip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    again = MeissonicTransformer2DModel.from_pretrained(tmp_path)
    inputs = random_inputs(model, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), again.eval()(*inputs))


def test_analytic_flop_count_matches_flop_counter(monkeypatch):
    """bench/bench_transformer.py counts the FLOPs of a forward analytically; torch's counter agrees."""
    import importlib.util
    import sys
    from pathlib import Path

    from torch.utils.flop_counter import FlopCounterMode

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_transformer.py"
    spec = importlib.util.spec_from_file_location("bench_transformer", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks the module up
    spec.loader.exec_module(bench)
    def plain_attention(q, k, v, scale):  # the counter does not see inside the fused CPU kernel
        return (q @ k.transpose(-1, -2) * scale).softmax(-1) @ v

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", plain_attention)
    for overrides in ({}, {"downsample": False, "upsample": False}):
        model = tiny_model(**overrides)
        height, width, text_len = 8, 6, 7
        inputs = random_inputs(model, 2, height, width, text_len)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*inputs)
        assert bench.count_flops(dict(model.config), 2, height, width, text_len) == counter.get_total_flops()
