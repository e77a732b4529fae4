"""Reward-filtered self-samples: exactly the model's correct grids are kept, each paired with a training render;
preference pairs hold a right and a wrong grid of the same prompt."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import VQModel

from meissonic.data import PreencodedSource
from meissonic.eval.world import check_task
from meissonic.interfaces.cli import main
from meissonic.interfaces.commands.common import default_model_folder
from meissonic.pipelines.images import images_to_tensor
from meissonic.training.self_samples import write_preference_pairs, write_self_samples
from meissonic.training.train import vq_encode
from meissonic.world import detect, render, training_example, training_tasks

PROMPTS, SEED = 12, 5


def redraw(pipe, prompts: int, seed: int, per_prompt: int, per_batch: int = 2):
    """The writers' draws made again in the same batches: per batch, its tasks, token grids (`per_prompt` rows per
    task, in order) and the detector's verdict on each grid."""
    tasks = training_tasks(prompts, seed)
    for first in range(0, prompts, per_batch):
        chunk = tasks[first:first + per_batch]
        generators = [torch.Generator().manual_seed(1_000_000 * seed + j * prompts + first + i)
                      for i in range(len(chunk)) for j in range(per_prompt)]
        tokens = pipe([t.text for t in chunk for _ in range(per_prompt)], generator=generators,
                      output_type="tokens").images
        images = pipe.to_output(tokens, "pil").images
        verdicts = [check_task(task, detect(images[i * per_prompt + j])).correct
                    for i, task in enumerate(chunk) for j in range(per_prompt)]
        yield chunk, tokens, verdicts


@pytest.fixture(scope="module")
def pipe(embedded_pipe):
    return embedded_pipe


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


def test_best_of_k_keeps_the_first_correct_of_each_prompts_draws(pipe, vqvae, tmp_path):
    prompts, per_prompt, seed = 8, 3, 7
    index = write_self_samples(pipe, vqvae, tmp_path / "own", prompts, seed=seed, batch_size=6,
                               samples_per_prompt=per_prompt)

    # The same draws, made again in the same batches (two prompts, three images each).
    expected, texts, right, rescued, per_batch = [], [], 0, 0, []
    for chunk, tokens, verdicts in redraw(pipe, prompts, seed, per_prompt):
        for i, task in enumerate(chunk):
            mine = verdicts[i * per_prompt:(i + 1) * per_prompt]
            right += sum(mine)
            rescued += any(mine) and not mine[0]
            if any(mine):
                expected.append(tokens[i * per_prompt + mine.index(True)])
                texts.append(task.text)
        per_batch.append(len(expected) - sum(per_batch))
    # One grid per prompt, and prompts whose first draw is wrong are kept for a later right one.
    assert 0 < len(expected) < right and rescued > 0

    source = PreencodedSource(tmp_path / "own")
    rows = [source.read(i) for i in range(len(source))]
    captions = [json.loads(line) for line in (tmp_path / "own" / "captions-00000.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(expected) == index["count"]
    meta = index["self_samples"]
    assert sum(meta["kept"].values()) == len(expected) and sum(meta["right"].values()) == right
    assert meta["samples_per_prompt"] == per_prompt and sum(meta["prompts"].values()) == prompts
    # Each batch writes its kept grids first, then as many renders.
    kept_rows, start = [], 0
    for count in per_batch:
        kept_rows += list(range(start, start + count))
        start += 2 * count
    assert torch.equal(torch.stack([rows[i]["tokens"].long() for i in kept_rows]), torch.stack(expected))
    assert [captions[i] for i in kept_rows] == texts
    with pytest.raises(ValueError, match="samples_per_prompt"):
        write_self_samples(pipe, vqvae, tmp_path / "none", prompts, samples_per_prompt=0)


@pytest.mark.parametrize("flag", ["--samples-per-prompt", "--num-prompts", "--batch-size"])
def test_command_refuses_counts_below_one_before_loading(flag, tmp_path, capsys):
    args = {"--num-prompts": "4", "--samples-per-prompt": "1", "--batch-size": "2", flag: "0"}
    code = main(["world", "self-samples", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "own"),
                 *[item for pair in args.items() for item in pair]])
    assert code == 2
    assert f"{flag} must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "own").exists()


def test_command_refuses_an_existing_folder(tmp_path, capsys):
    (tmp_path / "own").mkdir()
    code = main(["world", "self-samples", "--model", str(default_model_folder()), "--out", str(tmp_path / "own"),
                 "--num-prompts", "4"])
    assert code == 2
    assert "exists" in capsys.readouterr().err


def test_preference_pairs_hold_disjoint_right_and_wrong_grids_of_one_prompt(pipe, tmp_path):
    prompts, per_prompt, seed = 8, 3, 6
    index = write_preference_pairs(pipe, tmp_path / "pairs", prompts, seed=seed, samples_per_prompt=per_prompt,
                                   batch_size=6)

    # The same draws, made again in the same batches (two prompts, three images each).
    expected_chosen, expected_rejected, expected_captions = [], [], []
    for chunk, tokens, verdicts in redraw(pipe, prompts, seed, per_prompt):
        for i, task in enumerate(chunk):
            rows = range(i * per_prompt, (i + 1) * per_prompt)
            good = [r for r in rows if verdicts[r]]
            bad = [r for r in rows if r not in good]
            for g, b in zip(good, bad, strict=False):
                expected_chosen.append(tokens[g])
                expected_rejected.append(tokens[b])
                expected_captions.append(task.text)
    assert 0 < len(expected_chosen) < prompts  # some prompts are drawn both right and wrong, not all

    source = PreencodedSource(tmp_path / "pairs")
    rows = [source.read(i) for i in range(len(source))]
    captions = [json.loads(line) for line in (tmp_path / "pairs" / "captions-00000.jsonl").read_text().splitlines()]
    assert len(rows) == index["count"] == len(expected_chosen) == sum(index["preference_pairs"]["pairs"].values())
    assert torch.equal(torch.stack([r["tokens"].long() for r in rows]), torch.stack(expected_chosen))
    assert torch.equal(torch.stack([r["rejected_tokens"].long() for r in rows]), torch.stack(expected_rejected))
    assert captions == expected_captions
    assert all(not torch.equal(r["tokens"], r["rejected_tokens"]) for r in rows)
    assert sum(index["preference_pairs"]["prompts"].values()) == prompts
    assert source.empty() is not None
    with pytest.raises(ValueError, match="samples_per_prompt"):
        write_preference_pairs(pipe, tmp_path / "one", prompts, samples_per_prompt=1)
