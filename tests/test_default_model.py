"""The embedded default model ships in the package, loads like any released checkpoint and follows prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meissonic.eval import score
from meissonic.interfaces.cli import main
from meissonic.interfaces.commands.common import default_model_folder
from meissonic.world import heldout_tasks


@pytest.fixture(scope="module")
def pipe(embedded_pipe):
    return embedded_pipe


def test_package_weights_within_budget():
    size = sum(p.stat().st_size for p in default_model_folder().rglob("*") if p.is_file())
    assert size <= 60 * 2**20
    assert not list(default_model_folder().rglob("*.bin"))


def test_generates_at_two_seeds(pipe):
    images = [pipe("a red circle above a blue square", generator=torch.Generator().manual_seed(s)).images[0]
              for s in (0, 1)]
    assert all(image.size == (256, 256) for image in images)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_generate_without_model_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a green triangle"]) == 0
    assert capsys.readouterr().out.strip() == "out.png"
    assert (tmp_path / "out.png").is_file()


def test_relations_are_restated_in_the_order_the_model_draws(tmp_path, monkeypatch, capsys):
    """The model draws the object named first on the left / top, so its prompt_rewrites restate "A below B" as
    "B placed above A" (and state the background it left open); `meissonic generate` says so on stderr, and
    --no-prompt-rewrites encodes the prompt as typed."""
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a green triangle below a red star", "--steps", "2"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "out.png"
    assert "'a red star placed above a green triangle on a black background'" in out.err
    assert main(["generate", "a green triangle below a red star", "--steps", "2", "--no-prompt-rewrites"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "out-1.png" and "reads" not in out.err


def test_world_score_far_above_chance(pipe):
    tasks = heldout_tasks(16, seed=123)
    images = pipe([t.text for t in tasks], generator=[torch.Generator().manual_seed(i) for i in range(16)]).images
    result = score(images, tasks, chance_shifts=4)
    # Chance: the same images scored against other prompts (what a model that ignores the text would get).
    got, chance = result["categories"], result["chance"]["categories"]
    margins = {"colour": 0.4, "background": 0.4, "kind": 0.1}
    assert all(got[name] >= chance[name] + margin for name, margin in margins.items()), (got, chance)
    assert result["overall"] > result["chance"]["overall"], result
