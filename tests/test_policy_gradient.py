"""Policy-gradient fine-tuning on the world reward: the recorded trajectory is the sampler's, the log-probabilities
are those the tokens were drawn with, an update raises the advantage-weighted log-probability, and a resumed run
equals an uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from meissonic import MeissonicPipeline
from meissonic.eval.world import check_task
from meissonic.interfaces.cli import main
from meissonic.interfaces.commands.common import default_model_folder
from meissonic.training.policy_gradient import (
    PolicySettings,
    PolicyTrainer,
    committed_log_probs,
    group_advantages,
    sample_trajectories,
    world_reward,
)
from meissonic.world import detect, render, training_tasks

TINY = dict(prompts_per_update=1, samples_per_prompt=2, steps_per_update=2, save_every=1, seed=3)


@pytest.fixture(scope="module")
def pipe(embedded_pipe):
    return embedded_pipe


def test_advantages_compare_draws_of_the_same_prompt():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.8])
    advantages = group_advantages(rewards, 2)
    assert torch.allclose(advantages, torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 0.0, -0.3, 0.3]))
    assert torch.allclose(group_advantages(rewards, 4).view(2, 4).sum(1), torch.zeros(2), atol=1e-6)


def test_reward_ranks_right_above_partly_right_above_wrong():
    task = training_tasks(4, 0)[0]  # a single-object prompt
    assert task.task_type == "single"
    shape = task.scene.objects[0]
    other = next(c for c in ("red", "blue") if c != shape.colour)
    scenes = [task.scene, replace(task.scene, objects=(replace(shape, colour=other),)), replace(task.scene, objects=())]
    right, partly, wrong = (world_reward(check_task(task, detect(render(scene, 256)))) for scene in scenes)
    assert right == 1.0 > partly > wrong >= 0.0


def test_trajectory_is_the_samplers_and_log_probs_are_those_it_drew_with(pipe):
    prompts = [t.text for t in training_tasks(2, 1)]
    seen = []

    def keep_logits(_pipe, step, _t, values):
        seen.append(values["logits"].clone())
        return {}

    generators = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    expected = pipe(prompts, generator=generators, output_type="tokens", callback_on_step_end=keep_logits).images
    trajectory = sample_trajectories(pipe, prompts, [torch.Generator().manual_seed(10 + i) for i in range(2)])
    steps = len(trajectory.temperatures)
    assert len(trajectory.grids) == steps + 1 == len(seen) + 1
    assert torch.equal(trajectory.grids[-1], expected)
    mask_id = pipe.transformer.mask_token_id
    assert (trajectory.grids[0] == mask_id).all() and (trajectory.grids[-1] != mask_id).all()
    # The default sampler draws its late steps at token temperature 0.1.
    assert trajectory.temperatures[0] == 1.0 and trajectory.temperatures[-1] == pytest.approx(0.1)

    states, pooled = pipe.encode_prompt(prompts)
    micro = pipe.micro_conditions(2, 256, 256, None, (0, 0), 6.0)
    for i in (0, steps // 2, steps - 1):
        before, after = trajectory.grids[i], trajectory.grids[i + 1]
        timestep = (before == mask_id).flatten(1).float().mean(1)
        with torch.no_grad():
            logits = pipe.transformer(before, states, pooled, timestep, micro)
        ours = committed_log_probs(logits, before, after, mask_id, trajectory.temperatures[i])
        # What the sampler drew from: the logits it handed the callback (already divided by the temperature).
        codes = after.long().clamp(max=seen[i].shape[1] - 1)  # mask ids (not drawn yet) to any code: not counted
        drawn_from = seen[i].float().log_softmax(1).gather(1, codes[:, None]).squeeze(1)
        committed = (before == mask_id) & (after != mask_id)
        assert committed.sum() > 0
        assert torch.allclose(ours, (drawn_from * committed).flatten(1).sum(1), rtol=1e-4, atol=1e-3)


def test_an_update_raises_the_advantage_weighted_log_probability(tmp_path):
    trainer = PolicyTrainer(default_model_folder(), tmp_path / "run",
                            PolicySettings(updates=1, kl_beta=0.0, lr=1e-4, **{**TINY, "samples_per_prompt": 4}))
    trainer.pipe.transformer.load_state_dict(trainer.policy.state_dict())
    prompts = [training_tasks(1, 3)[0].text] * 4
    trajectory = sample_trajectories(trainer.pipe, prompts, [torch.Generator().manual_seed(i) for i in range(4)])
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    states, pooled = (x.float() for x in trainer.pipe.encode_prompt(prompts))
    micro = trainer.pipe.micro_conditions(4, 256, 256, None, (0, 0), 6.0).float()
    mask_id = trainer.policy.mask_token_id

    def surrogate() -> torch.Tensor:
        total = torch.zeros(())
        for i in (2, 5):
            before, after = trajectory.grids[i], trajectory.grids[i + 1]
            timestep = (before == mask_id).flatten(1).float().mean(1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = trainer.policy(before, states, pooled, timestep, micro)
            total = total + (advantages * committed_log_probs(logits, before, after, mask_id, 1.0)).sum()
        return total

    with torch.no_grad():
        before = surrogate()
    trainer.learn(trajectory, prompts, advantages, [2, 5], 1.0)
    with torch.no_grad():
        after = surrogate()
    assert after.item() > before.item() + 0.1


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    whole = PolicyTrainer(default_model_folder(), tmp_path / "whole", PolicySettings(updates=2, **TINY))
    whole.run()
    first = PolicyTrainer(default_model_folder(), tmp_path / "cut", PolicySettings(updates=1, **TINY))
    first.run()
    resumed = PolicyTrainer(default_model_folder(), tmp_path / "cut", PolicySettings(updates=2, **TINY), resume=True)
    assert resumed.update == 1
    export = resumed.run()
    for (name, a), b in zip(whole.policy.state_dict().items(), resumed.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    start = MeissonicPipeline.from_pretrained(default_model_folder()).transformer.state_dict()
    assert any(not torch.equal(start[k].float(), v) for k, v in resumed.policy.state_dict().items())

    def log(run: str) -> list[dict]:  # the log rows without their timings
        rows = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in rows]

    assert [r["update"] for r in log("cut")] == [1, 2]
    assert log("cut") == log("whole")
    pipe = MeissonicPipeline.from_pretrained(export)
    assert torch.equal(pipe.transformer.state_dict()["embed.embeddings.weight"],
                       resumed.policy.state_dict()["embed.embeddings.weight"])

    with pytest.raises(ValueError, match="lr"):
        PolicyTrainer(default_model_folder(), tmp_path / "cut", PolicySettings(updates=3, **{**TINY, "lr": 1e-3}),
                      resume=True)
    with pytest.raises(ValueError, match="was started from"):
        PolicyTrainer(tmp_path / "whole" / "export", tmp_path / "cut", PolicySettings(updates=3, **TINY), resume=True)
    with pytest.raises(FileExistsError):
        PolicyTrainer(default_model_folder(), tmp_path / "cut", PolicySettings(updates=3, **TINY))


def test_resume_before_the_first_checkpoint_starts_over_and_drops_the_lost_rows(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"update": 1, "reward": 0.5}) + "\n")
    trainer = PolicyTrainer(default_model_folder(), run, PolicySettings(updates=1, **TINY), resume=True)
    assert trainer.update == 0
    assert (run / "log.jsonl").read_text() == ""


def test_cli_refuses_bad_settings_and_existing_runs(tmp_path, capsys):
    base = ["world", "reinforce", "--model", str(default_model_folder())]
    assert main([*base, "--out", str(tmp_path / "a"), "--samples-per-prompt", "1"]) == 2
    assert "samples_per_prompt must be >= 2" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "a"), "--step-fraction", "0"]) == 2
    assert "step_fraction must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    assert main([*base, "--out", str(tmp_path / "b")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
