"""Reward-filtered self-samples: exactly the model's correct grids are kept, each paired with a training render."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import VQModel

from meissonic import MeissonicPipeline
from meissonic.data import PreencodedSource
from meissonic.eval.world import check_task
from meissonic.interfaces.cli import main
from meissonic.interfaces.commands.common import default_model_folder
from meissonic.pipelines.images import images_to_tensor
from meissonic.training.self_samples import write_self_samples
from meissonic.training.train import vq_encode
from meissonic.world import detect, render, training_example, training_tasks

PROMPTS, SEED = 12, 5


@pytest.fixture(scope="module")
def pipe():
    pipe = MeissonicPipeline.from_pretrained(default_model_folder(), torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def vqvae():
    return VQModel.from_pretrained(str(default_model_folder() / "vqvae"), torch_dtype=torch.float32).eval()


def test_keeps_exactly_the_correct_grids_and_pairs_each_with_a_render(pipe, vqvae, tmp_path):
    index = write_self_samples(pipe, vqvae, tmp_path / "own", PROMPTS, seed=SEED, batch_size=5)

    # The same draws, made again: which of them does the detector read as correct?
    tasks = training_tasks(PROMPTS, SEED)
    generators = [torch.Generator().manual_seed(1_000_000 * SEED + i) for i in range(PROMPTS)]
    tokens = torch.cat([pipe([t.text for t in tasks[s:s + 5]], generator=generators[s:s + 5],
                             output_type="tokens").images for s in range(0, PROMPTS, 5)])
    images = pipe.to_output(tokens, "pil").images
    correct = [i for i, task in enumerate(tasks) if check_task(task, detect(images[i])).correct]
    assert 0 < len(correct) < PROMPTS  # the filter has something to keep and something to drop

    source = PreencodedSource(tmp_path / "own")
    rows = [source.read(i) for i in range(len(source))]
    captions = [json.loads(line) for line in (tmp_path / "own" / "captions-00000.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(correct) == index["count"]
    assert sum(index["self_samples"]["kept"].values()) == len(correct)
    assert sum(index["self_samples"]["prompts"].values()) == PROMPTS

    # Each batch writes its kept grids, then as many renders (training stream 0 in order).
    own, renders = [], []
    for first in range(0, PROMPTS, 5):
        kept = [i for i in correct if first <= i < first + 5]
        start = len(own) + len(renders)
        own += list(range(start, start + len(kept)))
        renders += list(range(start + len(kept), start + 2 * len(kept)))
    assert torch.equal(torch.stack([rows[i]["tokens"].long() for i in own]), tokens[correct])
    assert [captions[i] for i in own] == [tasks[i].text for i in correct]

    scene, options = training_example(0, seed=0)
    pixels = images_to_tensor(render(scene), 256, 256)
    assert torch.equal(rows[renders[0]]["tokens"].long(), vq_encode(vqvae, pixels)[0])
    assert captions[renders[0]] in options
    assert source.empty() is not None


def test_command_refuses_an_existing_folder(tmp_path, capsys):
    (tmp_path / "own").mkdir()
    code = main(["world", "self-samples", "--model", str(default_model_folder()), "--out", str(tmp_path / "own"),
                 "--num-prompts", "4"])
    assert code == 2
    assert "exists" in capsys.readouterr().err
