"""Guidance distillation (`objective.distill_guidance`): the target is the frozen starting weights' distribution
under classifier-free guidance at the scale the input's mask ratio selects; a CFG-dropped row's target is the
unconditional one; training brings the conditional branch to the guided distribution; a resumed run keeps the
starting weights as its teacher."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from test_train_helpers import tiny_train_config, write_config, write_preencoded

from meissonic.data import concatenate
from meissonic.sampling.enhance import guided_logits
from meissonic.training.config import load_config
from meissonic.training.objective import distillation_scales, masked_kl_sum
from meissonic.training.train import Trainer


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data, vq, tokens = write_preencoded(root)
    # A teacher that reads its captions: the tiny model trained 60 steps with the masked-token objective.
    plain = tiny_train_config(root / "teacher", data, vq, max_steps=60, batch_size=8, **{
        "data.path": str(tokens), "data.format": "preencoded", "objective.cfg_dropout": 0.3,
        "checkpoint.every": 60,
        "ema.enabled": False})
    Trainer(load_config(write_config(root / "teacher.yaml", plain))).run(export=False)
    teacher = root / "teacher" / "run" / "checkpoints" / "step-00000060"
    return {"data": data, "vq": vq, "tokens": str(tokens), "teacher": str(teacher)}


def distill_config(encoded, tmp_path, schedule, **changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tiny_train_config(tmp_path, encoded["data"], encoded["vq"], **{
        "data.path": encoded["tokens"], "data.format": "preencoded", "objective.distill_guidance": schedule,
        "objective.cfg_dropout": 0.0, "optim.warmup_steps": 0, "model.init_from": encoded["teacher"], **changes,
    })
    return load_config(write_config(tmp_path / "c.yaml", config))


def log_rows(run_dir) -> list[dict]:
    with open(run_dir / "log.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_scales_follow_the_mask_ratio():
    ratios = torch.tensor([1.0, 0.745, 0.72, 0.707, 0.3, 0.01])
    assert distillation_scales(ratios, [(0.72, 3.0), (0.0, 2.0)]).tolist() == [3, 3, 2, 2, 2, 2]
    assert distillation_scales(ratios, [(0.9, 5.0), (0.5, 3.0), (0.0, 1.0)]).tolist() == [5, 3, 3, 3, 1, 1]
    assert distillation_scales(ratios, [(0.0, 4.0)]).tolist() == [4] * 6


def test_guided_logits_and_masked_kl():
    uncond, cond = torch.randn(2, 3, 5, 2, 2).unbind(0)
    guided = guided_logits(uncond, cond, torch.tensor([1.0, 0.0, 3.0]))
    assert torch.allclose(guided[0], cond[0], atol=1e-6) and torch.equal(guided[1], uncond[1])
    assert torch.allclose(guided[2], uncond[2] + 3 * (cond[2] - uncond[2]), atol=1e-6)
    masks = torch.tensor([[True, False, False, True], [False] * 4, [True] * 4])
    assert masked_kl_sum(cond, cond, masks).item() == pytest.approx(0, abs=1e-6)
    student, teacher = cond.permute(0, 2, 3, 1).reshape(-1, 5), guided.permute(0, 2, 3, 1).reshape(-1, 5)
    expected = sum(torch.nn.functional.kl_div(student[i].log_softmax(-1), teacher[i].log_softmax(-1),
                                              log_target=True, reduction="sum")
                   for i in range(12) if masks.reshape(-1)[i])
    assert masked_kl_sum(cond, guided, masks).item() == pytest.approx(expected.item(), rel=1e-5)


def test_at_scale_one_the_target_is_the_model_itself(encoded, tmp_path):
    Trainer(distill_config(encoded, tmp_path, [[0.0, 1.0]], max_steps=1)).run(export=False)
    first = log_rows(tmp_path / "run")[0]
    # The student is its own teacher's conditional branch: KL 0 up to bf16 rounding (autograd's attention kernel
    # is not the inference one).
    assert first["loss"] < 1e-3


def test_the_export_samples_at_guidance_one(encoded, tmp_path):
    Trainer(distill_config(encoded, tmp_path, [[0.0, 3.0]], max_steps=1)).run(export=True)
    index = json.loads((tmp_path / "run" / "export" / "model_index.json").read_text())
    assert index["default_guidance_scale"] == 1.0


def test_cfg_dropped_rows_learn_the_unconditional_distribution(encoded, tmp_path):
    Trainer(distill_config(encoded, tmp_path, [[0.0, 4.0]], max_steps=1,
                           **{"objective.cfg_dropout": 1.0})).run(export=False)
    assert log_rows(tmp_path / "run")[0]["loss"] < 1e-3  # guided(u, u) = u, and the dropped student sees u


def test_training_brings_the_conditional_branch_to_the_guided_distribution(encoded, tmp_path):
    config = distill_config(encoded, tmp_path, [[0.5, 12.0], [0.0, 8.0]], max_steps=40, batch_size=8,
                            **{"ema.enabled": False})
    trainer = Trainer(config)
    batch = next(trainer._loader())
    tokens = batch["tokens"].long()
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(tokens.shape[0], tokens[0].numel(), generator=generator) < 0.8
    drop = torch.zeros(tokens.shape[0], dtype=torch.bool)

    def kl_to_target() -> float:
        with torch.no_grad(), trainer.accelerator.autocast():
            args = trainer.model_inputs(batch, tokens, masks, drop)
            return masked_kl_sum(trainer.model(*args), trainer.teacher_logits(args, masks, drop), masks).item()

    before = kl_to_target()
    assert before / masks.sum().item() > 1e-3  # strong guidance moves the distribution away from the conditional
    trainer.run(export=False)
    assert kl_to_target() < 0.7 * before


def test_resumed_run_keeps_the_starting_weights_as_teacher(encoded, tmp_path):
    schedule = [[0.6, 3.0], [0.0, 2.0]]
    Trainer(distill_config(encoded, tmp_path / "whole", schedule, max_steps=4, **{"checkpoint.every": 2})).run(
        export=False)
    Trainer(distill_config(encoded, tmp_path / "cut", schedule, max_steps=2, **{"checkpoint.every": 2})).run(
        export=False)
    Trainer(distill_config(encoded, tmp_path / "cut", schedule, max_steps=4, **{"checkpoint.every": 2}),
            resume=True).run(export=False)
    final = "checkpoints/step-00000004/model.safetensors"
    a, b = load_file(str(tmp_path / "whole/run" / final)), load_file(str(tmp_path / "cut/run" / final))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in log_rows(tmp_path / "whole/run")] == [r["loss"] for r in log_rows(tmp_path / "cut/run")]


@pytest.mark.parametrize("schedule, message", [
    ([[0.5, 3.0]], "end at 0"),
    ([[0.2, 3.0], [0.5, 2.0], [0.0, 1.0]], "strictly decreasing"),
    ([[1.0, 3.0], [0.0, 2.0]], r"in \[0, 1\)"),
    ([[0.5, -1.0], [0.0, 2.0]], "finite and >= 0"),
])
def test_refuses_bad_schedules(encoded, tmp_path, schedule, message):
    with pytest.raises(ValueError, match=message):
        distill_config(encoded, tmp_path, schedule)


def test_refuses_preference_training_and_a_trained_text_encoder(encoded, tmp_path):
    for change in ({"objective.preference_beta": 0.1}, {"objective.train_text_encoder": True}):
        with pytest.raises(ValueError, match="frozen text encoder"):
            distill_config(encoded, tmp_path, [[0.0, 3.0]], **change)


def test_rows_flagged_token_targets_learn_their_own_tokens(encoded, tmp_path):
    flagged = str(tmp_path / "flagged")
    concatenate(flagged, [encoded["tokens"]], token_targets=[True])
    changes = {"data.path": flagged, "max_steps": 1, "batch_size": 8}
    plain = tiny_train_config(tmp_path / "plain", encoded["data"], encoded["vq"], **{
        "data.format": "preencoded", "objective.cfg_dropout": 0.0, "optim.warmup_steps": 0,
        "model.init_from": encoded["teacher"], **changes})
    Trainer(load_config(write_config(tmp_path / "plain.yaml", plain))).run(export=False)
    Trainer(distill_config(encoded, tmp_path / "all", [[0.0, 3.0]], **changes)).run(export=False)
    cross_entropy = log_rows(tmp_path / "plain" / "run")[0]["loss"]
    assert cross_entropy > 0.1  # the teacher's own distribution is far from one-hot: KL alone would be ~0 here
    assert log_rows(tmp_path / "all" / "run")[0]["loss"] == pytest.approx(cross_entropy, rel=1e-4)
    # Unflagged rows (and CFG-dropped flagged rows) still learn the teacher's distribution: KL 0 at scale 1.
    none = str(tmp_path / "none")
    concatenate(none, [encoded["tokens"]], token_targets=[False])
    Trainer(distill_config(encoded, tmp_path / "none_run", [[0.0, 1.0]], **changes | {"data.path": none})).run(
        export=False)
    Trainer(distill_config(encoded, tmp_path / "dropped", [[0.0, 1.0]], **changes | {
        "objective.cfg_dropout": 1.0})).run(export=False)
    assert log_rows(tmp_path / "none_run" / "run")[0]["loss"] < 1e-3
    assert log_rows(tmp_path / "dropped" / "run")[0]["loss"] < 1e-3
    # Half flagged (the rows twice, once flagged, in one batch): the loss is the flagged rows' cross-entropy alone,
    # over every masked token.
    half = str(tmp_path / "half")
    assert concatenate(half, [encoded["tokens"], encoded["tokens"]], token_targets=[True, False]) == 16
    with pytest.raises(ValueError, match="one token_targets flag per folder"):
        concatenate(tmp_path / "bad", [encoded["tokens"]], token_targets=[True, False])
    Trainer(distill_config(encoded, tmp_path / "half_run", [[0.0, 1.0]], **changes | {
        "data.path": half, "batch_size": 16})).run(export=False)
    mixed = log_rows(tmp_path / "half_run" / "run")[0]["loss"]
    assert 0.2 * cross_entropy < mixed < 0.8 * cross_entropy
