"""The masked-token objective, CFG dropout as the model sees it, optimizer groups and stage-3 chaining."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_helpers import tiny_train_config, write_config, write_imagefolder, write_tiny_vq

from meissonic.models import MeissonicTransformer2DModel
from meissonic.models.text import encode_prompts
from meissonic.testing import tiny_transformer_config
from meissonic.training.components import load_chained
from meissonic.training.config import load_config
from meissonic.training.objective import sample_masks, step_noise, timestep_for
from meissonic.training.optim import decay_groups
from meissonic.training.train import Trainer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("objective")
    return root, write_imagefolder(root / "data", count=8), write_tiny_vq(root / "vq")


def test_mask_counts_follow_the_cosine_schedule():
    masks = sample_masks(4000, 64, torch.Generator().manual_seed(0))
    counts = masks.sum(1).float()
    assert counts.min() >= 1 and counts.max() <= 64
    # E[cos(pi u / 2)] = 2 / pi
    assert abs(counts.mean().item() / 64 - 2 / math.pi) < 0.02
    assert torch.equal(step_noise(3, 7, 8, 16, 0.5).masks, step_noise(3, 7, 8, 16, 0.5).masks)
    assert timestep_for(torch.tensor([1.0]), "step_index").item() == pytest.approx(63.0)
    assert timestep_for(torch.tensor([0.25]), "mask_ratio").item() == 0.25


def test_min_mask_ratio_restricts_the_cosine_schedule_to_high_ratios():
    length, low = 100, 0.8
    masks = sample_masks(4000, length, torch.Generator().manual_seed(0), min_mask_ratio=low)
    ratios = masks.sum(1).float() / length
    assert ratios.min() >= low and ratios.max() == 1.0
    # u ~ U(0, a), a = 2 acos(low) / pi: E[cos(pi u / 2)] = 2 sin(pi a / 2) / (pi a),
    # P(r >= 0.95) = acos(0.95) / acos(low)
    a = 2 * math.acos(low) / math.pi
    assert abs(ratios.mean().item() - 2 * math.sin(math.pi * a / 2) / (math.pi * a)) < 0.005
    assert abs((ratios >= 0.95).float().mean().item() - math.acos(0.95) / math.acos(low)) < 0.03
    assert torch.equal(sample_masks(8, 16, torch.Generator().manual_seed(1)),
                       sample_masks(8, 16, torch.Generator().manual_seed(1), min_mask_ratio=0.0))


def test_full_mask_fraction_masks_that_share_of_rows_whole_and_leaves_the_rest_on_the_schedule():
    length, fraction = 100, 0.25
    masks = sample_masks(4000, length, torch.Generator().manual_seed(0), full_mask_fraction=fraction)
    whole = masks.all(1).float().mean().item()
    # the cosine schedule alone masks a row whole when round(cos(pi u / 2) L) = L: u < 2 acos(1 - 0.5 / L) / pi
    by_schedule = 2 * math.acos(1 - 0.5 / length) / math.pi
    assert abs(whole - (fraction + (1 - fraction) * by_schedule)) < 0.02
    partial = masks[~masks.all(1)].sum(1).float() / length  # the other rows keep the cosine density
    assert abs(partial.mean().item() - 2 / math.pi) < 0.03
    assert torch.equal(sample_masks(8, 16, torch.Generator().manual_seed(1)),
                       sample_masks(8, 16, torch.Generator().manual_seed(1), full_mask_fraction=0.0))


def train_and_record_inputs(assets, tmp_path, **overrides) -> tuple[dict, Trainer, list[torch.Tensor]]:
    """A tiny training run with `overrides`; returns its config, trainer and every token grid it fed."""
    root, data, vq = assets
    config = tiny_train_config(tmp_path, data, vq, **overrides)
    trainer = Trainer(load_config(write_config(tmp_path / "c.yaml", config)))
    inputs = []
    trainer.transformer.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    trainer.run(export=False)
    return config, trainer, inputs


def test_training_with_full_mask_fraction_feeds_fully_masked_rows(assets, tmp_path):
    config, trainer, inputs = train_and_record_inputs(
        assets, tmp_path, **{"max_steps": 2, "objective.full_mask_fraction": 1.0})
    assert len(inputs) == 2 and all((tokens == trainer.mask_id).all() for tokens in inputs)
    with pytest.raises(ValueError, match="full_mask_fraction"):
        load_config(write_config(tmp_path / "bad.yaml", {**config, "objective": {"full_mask_fraction": 1.5}}))


def test_training_with_min_mask_ratio_masks_only_high_ratios(assets, tmp_path):
    config, trainer, inputs = train_and_record_inputs(
        assets, tmp_path, **{"max_steps": 3, "objective.min_mask_ratio": 0.9})
    assert len(inputs) == 3
    for tokens in inputs:
        assert ((tokens == trainer.mask_id).flatten(1).float().mean(1) >= 0.9).all()
    with pytest.raises(ValueError, match="min_mask_ratio"):
        load_config(write_config(tmp_path / "bad.yaml", {**config, "objective": {"min_mask_ratio": 1.0}}))


@pytest.mark.parametrize("train_text_encoder", [False, True])
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_cfg_dropout_feeds_exactly_the_empty_prompt(assets, tmp_path, p, train_text_encoder):
    root, data, vq = assets
    config = tiny_train_config(
        tmp_path,
        data,
        vq,
        **{"max_steps": 2, "objective.cfg_dropout": p, "objective.train_text_encoder": train_text_encoder},
    )
    trainer = Trainer(load_config(write_config(tmp_path / "c.yaml", config)))
    seen = []
    trainer.transformer.register_forward_pre_hook(lambda module, args: seen.append((args[1], args[2])))
    text_encoder = trainer.accelerator.unwrap_model(trainer.text_encoder)
    empties = []
    trainer.on_step_end = lambda step: empties.append(encode_prompts(trainer.tokenizer, text_encoder, [""]))
    # The empty prompt as the pipeline encodes it, with the weights of the forward pass about to run.
    empties.append(encode_prompts(trainer.tokenizer, text_encoder, [""]))
    trainer.run(export=False)
    assert len(seen) == 2
    for (states, pooled), (empty_states, empty_pooled) in zip(seen, empties, strict=False):
        same_states = (
            torch.isclose(states.float(), empty_states.float().expand_as(states), atol=1e-5).flatten(1).all(1)
        )
        same_pooled = torch.isclose(pooled.float(), empty_pooled.float().expand_as(pooled), atol=1e-5).all(1)
        if p == 1.0:
            assert same_states.all() and same_pooled.all()
        else:
            assert not same_states.any() and not same_pooled.any()


def test_no_decay_groups_hold_biases_norms_and_embeddings(assets, tmp_path):
    root, data, vq = assets
    trainer = Trainer(load_config(write_config(tmp_path / "c.yaml", tiny_train_config(tmp_path, data, vq))))
    decay, no_decay = decay_groups(trainer.transformer, 0.01)
    names = {id(p): n for n, p in trainer.transformer.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "embed.embeddings.weight" in no_decay_names
    assert all(n.endswith(("bias", "weight")) for n in no_decay_names)
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(n.endswith("norm_q.weight") for n in no_decay_names)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def first_step_gradients(assets, folder, **changes) -> tuple[Trainer, torch.Tensor]:
    """A float32 trainer with `changes` to the tiny config, after one backward pass on the first batch."""
    root, data, vq = assets
    config = tiny_train_config(folder, data, vq, mixed_precision="no", **changes)
    trainer = Trainer(load_config(write_config(folder.with_suffix(".yaml"), config)))
    batch = next(trainer._loader())
    noise = step_noise(0, 0, 4, 64, 0.1)
    trainer.micro_step(batch, noise.masks, noise.drop).backward()
    grads = torch.cat([p.grad.flatten() for p in trainer.transformer.parameters() if p.grad is not None])
    return trainer, grads


def test_gradient_checkpointing_gives_the_same_gradients(assets, tmp_path):
    _, eager = first_step_gradients(assets, tmp_path / "eager")
    _, checkpointed = first_step_gradients(assets, tmp_path / "checkpointed", gradient_checkpointing=True)
    torch.testing.assert_close(eager, checkpointed, atol=1e-5, rtol=1e-4)


def test_compiled_training_matches_eager_and_keeps_checkpoint_keys(assets, tmp_path):
    eager_trainer, eager = first_step_gradients(assets, tmp_path / "eager")
    compiled_trainer, compiled = first_step_gradients(assets, tmp_path / "compiled", compile=True)
    assert eager_trainer.transformer._compiled_call_impl is None
    assert compiled_trainer.transformer._compiled_call_impl is not None
    torch.testing.assert_close(eager, compiled, atol=1e-5, rtol=1e-4)
    keys = sorted(compiled_trainer.transformer.state_dict())
    assert keys == sorted(eager_trainer.transformer.state_dict()) and not any("_orig_mod" in k for k in keys)


def test_stage3_chaining_adds_only_compression_layers(assets, tmp_path):
    root, data, vq = assets
    stage2 = tiny_train_config(tmp_path / "s2", data, vq, max_steps=2)
    trainer2 = Trainer(load_config(write_config(tmp_path / "s2.yaml", stage2)))
    trainer2.run()
    exported = tmp_path / "s2" / "run" / "export"
    old = {k: v.clone() for k, v in trainer2.transformer.state_dict().items()}

    stage3 = tiny_train_config(
        tmp_path / "s3",
        data,
        vq,
        max_steps=1,
        **{
            "model.init_from": str(exported),
            "model.transformer.downsample": True,
            "model.transformer.upsample": True,
        },
    )
    trainer3 = Trainer(load_config(write_config(tmp_path / "s3.yaml", stage3)))
    new = trainer3.transformer.state_dict()
    added = set(new) - set(old)
    assert added and all(k.startswith(("down_block.", "up_block.")) for k in added)
    assert sorted(added) == trainer3.new_keys
    for key, value in old.items():
        assert torch.equal(new[key], value), key
    # Anything beyond the compression layers missing is an error, not a silent partial load.
    broken = {k: v for k, v in old.items() if not k.startswith("mlm_layer.")}
    with pytest.raises(ValueError, match="not compression layers"):
        load_chained(trainer3.transformer, broken)


def test_jointly_trained_text_encoder_is_averaged_with_the_transformer(assets, tmp_path):
    """With EMA on and the text encoder training, the export pairs the EMA transformer with the EMA text encoder
    (the average of its weights after each step), and a checkpoint carries that average for resuming."""
    root, data, vq = assets
    decay = 0.5
    config = tiny_train_config(
        tmp_path, data, vq,
        **{"max_steps": 3, "objective.train_text_encoder": True, "ema.enabled": True, "ema.decay": decay,
           "checkpoint.every": 3},
    )
    trainer = Trainer(load_config(write_config(tmp_path / "c.yaml", config)))
    live = trainer.accelerator.unwrap_model(trainer.text_encoder)
    expected = {n: p.detach().float().clone() for n, p in live.named_parameters()}

    def average(step):
        for name, param in live.named_parameters():
            expected[name].lerp_(param.detach().float(), 1 - decay)

    trainer.on_step_end = average
    trainer.run(export=False)
    _, exported = trainer.export_models()
    exported_params = dict(exported.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(exported_params[name].float(), value, atol=1e-6, rtol=0)
    assert any(not torch.equal(exported_params[n], p) for n, p in live.named_parameters())
    resumed = Trainer(load_config(write_config(tmp_path / "c.yaml", config)), resume=True)
    _, again = resumed.export_models()
    for name, param in again.named_parameters():
        torch.testing.assert_close(param.float(), expected[name], atol=1e-6, rtol=0)


def test_chaining_into_a_deeper_model_appends_identity_blocks():
    """A model grown by appended dual- and single-stream blocks computes what the smaller one did (their adaLN
    gates start at zero), the gates get gradients, and a block missing in the middle is an error."""
    torch.manual_seed(0)
    small = MeissonicTransformer2DModel(**{**tiny_transformer_config(), "num_layers": 1, "num_single_layers": 1})
    big = MeissonicTransformer2DModel(**{**tiny_transformer_config(), "num_layers": 2, "num_single_layers": 3})
    added = load_chained(big, small.state_dict())
    assert {".".join(k.split(".")[:2]) for k in added} == {
        "transformer_blocks.1", "single_transformer_blocks.1", "single_transformer_blocks.2",
    }

    tokens = torch.randint(0, 64, (2, 8, 8))
    text = torch.randn(2, 5, 32)
    inputs = (tokens, text, torch.randn(2, 32), torch.tensor([0.3, 0.9]), torch.rand(2, 5) * 100)
    with torch.no_grad():
        torch.testing.assert_close(big(*inputs), small(*inputs), atol=1e-5, rtol=1e-5)

    big(*inputs).logsumexp(1).mean().backward()
    gate = big.single_transformer_blocks[2].norm.linear.weight.grad
    assert gate[-gate.shape[0] // 3:].abs().sum() > 0

    holed = {k: v for k, v in big.state_dict().items() if not k.startswith("single_transformer_blocks.1.")}
    with pytest.raises(ValueError, match="not compression layers or appended blocks"):
        load_chained(big, holed)
