"""Command line of the enhanced sampler: flags, bulk generation, `eval compare` (tiny random model: API only)."""

import argparse
import json
import shutil

import numpy as np
import PIL.Image
import pytest

from meissonic.interfaces import cli
from meissonic.interfaces.commands.common import add_enhance_arguments, sampler_options, sampler_settings
from meissonic.interfaces.commands.eval_compare import aggregate, paired_win_rate
from meissonic.sampling.options import SamplerOptions
from meissonic.testing import build_tiny_pipeline_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_tiny_pipeline_folder(tmp_path_factory.mktemp("cli") / "model"))


@pytest.fixture
def eval_dispatcher(monkeypatch):
    """`meissonic eval` routed through the world/compare dispatcher, as proposed for cli.py."""
    monkeypatch.setitem(cli.SUBCOMMANDS, "eval", ("meissonic.interfaces.commands.eval", "evaluate"))


@pytest.fixture(scope="module")
def model_with_default(model, tmp_path_factory):
    """The tiny model with guidance in the first half of the steps as its stored text-to-image sampler."""
    folder = tmp_path_factory.mktemp("cli") / "guided-early"
    shutil.copytree(model, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["default_sampler"] = {"guidance_interval": [0.0, 0.5]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(folder)


def parse(argv, default=None):
    parser = argparse.ArgumentParser()
    add_enhance_arguments(parser)
    return sampler_options(parser.parse_args(argv), default)


def settings(argv):
    parser = argparse.ArgumentParser()
    add_enhance_arguments(parser)
    return sampler_settings(parser.parse_args(argv))


def test_flags_build_sampler_options():
    assert parse([]) == SamplerOptions()
    assert parse(["--published"]) == SamplerOptions.published()
    options = parse(["--noise-reg", "--differential", "0.5", "--zigzag", "--guidance-schedule", "linear",
                     "--guidance-interval", "0.1", "0.9", "--halton", "--tome", "--tome-reuse", "3",
                     "--token-temperature", "0.5", "--early-steps", "0.6"])
    assert options == SamplerOptions(noise_reg=2.0, differential=True, differential_fraction=0.5, zigzag=True,
                                     guidance_schedule="linear", guidance_interval=(0.1, 0.9), order="halton",
                                     tome_ratio=0.25, tome_reuse=3, token_temperature=0.5, early_steps=0.6)
    assert parse(["--sampler", "published", "--noise-reg", "1"]).noise_reg == 1.0


def test_flags_start_from_the_model_sampler():
    """No --sampler: the model's sampler with the single flags on top; --sampler replaces it whole."""
    early = SamplerOptions(guidance_interval=(0.0, 0.5))
    assert parse([], early) == early
    assert parse(["--token-temperature", "0.5"], early) == SamplerOptions(guidance_interval=(0.0, 0.5),
                                                                          token_temperature=0.5)
    assert parse(["--sampler", "vanilla"], early) == SamplerOptions()
    assert parse(["--guidance-interval", "0", "1"], early) == SamplerOptions()
    # what the UI and the server lay over the model's sampler: only what the flags set, all of a --sampler spec
    assert settings([]) == {}
    assert settings(["--guidance-interval", "0", "1"]) == {"guidance_interval": (0.0, 1.0)}
    assert settings(["--sampler", "vanilla"]) == vars(SamplerOptions())


def test_generate_uses_the_model_sampler(model, model_with_default, tmp_path):
    def image(folder, *flags):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        assert cli.main(["generate", "a red circle", "--model", folder, "-o", str(out), "--steps", "4",
                         "--guidance-scale", "3", *flags]) == 0
        return np.asarray(PIL.Image.open(out))

    stored = image(model_with_default)
    assert np.array_equal(stored, image(model, "--guidance-interval", "0", "0.5"))
    assert not np.array_equal(stored, image(model))
    assert np.array_equal(image(model_with_default, "--sampler", "vanilla"), image(model))


def test_generate_with_every_flag_and_int8(model, tmp_path):
    out = tmp_path / "x.png"
    code = cli.main(["generate", "a red circle", "--model", model, "-o", str(out), "--steps", "3", "--published",
                     "--halton", "--tome", "--guidance-schedule", "cosine", "--quantize", "int8"])
    assert code == 0 and PIL.Image.open(out).size == (32, 32)


def test_bad_sampler_setting_is_a_one_line_error(model, tmp_path, capsys):
    code = cli.main(["generate", "x", "--model", model, "-o", str(tmp_path / "o.png"), "--differential", "1.5"])
    assert code == 2 and "differential_fraction" in capsys.readouterr().err


def test_bulk_generation_from_a_prompt_file(model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\nblue square\ngreen triangle\n")
    folder = tmp_path / "out"
    code = cli.main(["generate", "--prompts", str(prompts), "--output-dir", str(folder), "--model", model,
                     "--steps", "2", "--batch-size", "2", "--seed", "4"])
    assert code == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["00000.png", "00001.png", "00002.png"]
    # the same image as a single call with the same seed (line i uses seed + i)
    single = tmp_path / "single.png"
    cli.main(["generate", "green triangle", "--model", model, "--steps", "2", "--seed", "6", "-o", str(single)])
    assert np.array_equal(np.asarray(PIL.Image.open(single)), np.asarray(PIL.Image.open(folder / "00002.png")))
    assert cli.main(["generate", "--prompts", str(prompts), "--output-dir", str(folder), "--model", model]) == 2
    assert "exists" in capsys.readouterr().err


def test_paired_statistics():
    a = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    b = np.array([1, 0, 1, 1, 1, 0], dtype=bool)
    paired = paired_win_rate(a, b, resamples=500)
    assert (paired["wins"], paired["losses"], paired["ties"], paired["n"]) == (2, 1, 3, 6)
    assert paired["win_rate"] == pytest.approx((2 + 0.5 * 3) / 6)
    assert paired["ci95"][0] <= paired["win_rate"] <= paired["ci95"][1]
    same = paired_win_rate(a, a, resamples=100)
    assert same["win_rate"] == 0.5 and same["ci95"] == [0.5, 0.5]
    records = [{"correct": True, "checks": {"kind": True, "count": False}, "task_type": "single"},
               {"correct": False, "checks": {"kind": False}, "task_type": "pair"}]
    assert aggregate(records)["categories"] == {"kind": 0.5, "count": 0.0}


def test_eval_compare_on_the_tiny_model(model, tmp_path, capsys, eval_dispatcher):
    out = tmp_path / "cmp.json"
    code = cli.main(["eval", "compare", "--model", model, "--a", "vanilla", "--b", "noise_reg=2,order=halton",
                     "vanilla", "--num-prompts", "6", "--steps", "2", "--size", "32", "--batch-size", "4",
                     "--dtype", "float32", "--bootstrap", "200", "--out", str(out), "--save-images",
                     str(tmp_path / "imgs"), "--side-by-side", "3"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["a"]["sampler"] == SamplerOptions().to_dict()
    first, second = result["comparisons"]
    assert result["complete"] is True
    assert first["b"]["sampler"]["order"] == "halton" and first["paired"]["n"] == 6
    assert set(result["a"]["scores"]) == {"overall", "categories", "task_types"}
    assert result["a"]["seconds_per_image"] > 0 and len(first["per_task"]) == 6
    # B identical to A (same prompts, same seeds, no state kept between calls): every task is a tie.
    assert [t["a"] for t in second["per_task"]] == [t["b"] for t in second["per_task"]]
    assert second["paired"]["ties"] == 6 and second["paired"]["win_rate"] == 0.5
    for i in range(6):
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "imgs" / "a" / f"{i:05d}.png")),
                              np.asarray(PIL.Image.open(tmp_path / "imgs" / "b2" / f"{i:05d}.png")))
    assert PIL.Image.open(tmp_path / "imgs" / "side_by_side.png").size == (3 * 32, 3 * 32)
    assert len(list((tmp_path / "imgs" / "b1").glob("*.png"))) == 6
    printed = capsys.readouterr().out
    assert "win rate" in printed and printed.count("| noise_reg=2.0,order=halton |") == 1
    assert printed.count("| vanilla (A) |") == 1 and printed.count("| vanilla |") == 1


def test_eval_compare_without_model_uses_the_embedded_model(tmp_path, eval_dispatcher):
    from meissonic.interfaces.commands.common import default_model_folder

    out = tmp_path / "cmp.json"
    code = cli.main(["eval", "compare", "--b", "vanilla", "--num-prompts", "1", "--steps", "1", "--size", "32",
                     "--bootstrap", "10", "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["model"] == str(default_model_folder())


def test_eval_compare_cut_midway_keeps_the_finished_settings(model, tmp_path, monkeypatch, eval_dispatcher):
    from meissonic.interfaces.commands import eval_compare

    calls, real = [], eval_compare.generate

    def cut_at_the_third_setting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(eval_compare, "generate", cut_at_the_third_setting)
    out = tmp_path / "cmp.json"
    code = cli.main(["eval", "compare", "--model", model, "--b", "differential=true", "order=halton",
                     "--num-prompts", "2", "--steps", "2", "--size", "32", "--dtype", "float32", "--out", str(out)])
    assert code != 0 and len(calls) == 3
    result = json.loads(out.read_text())
    assert result["complete"] is False and result["a"]["label"] == "vanilla"
    assert [c["b"]["label"] for c in result["comparisons"]] == ["differential=True"]


def test_eval_compare_rejects_mismatched_labels(model, tmp_path, capsys, eval_dispatcher):
    code = cli.main(["eval", "compare", "--model", model, "--b", "differential=true", "--b-label", "x", "y",
                     "--out", str(tmp_path / "cmp.json")])
    assert code != 0 and "--b-label gives 2 names for 1 --b settings" in capsys.readouterr().err
    assert not (tmp_path / "cmp.json").exists()


def test_eval_world_still_routes(model, tmp_path, eval_dispatcher):
    out = tmp_path / "world.json"
    code = cli.main(["eval", "world", "--model", model, "--num-prompts", "2", "--steps", "1", "--size", "32",
                     "--vq-images", "0", "--out", str(out)])
    assert code == 0 and json.loads(out.read_text())["num_tasks"] == 2


def test_eval_world_records_and_uses_the_model_sampler(model_with_default, tmp_path, eval_dispatcher):
    out = tmp_path / "world.json"
    code = cli.main(["eval", "world", "--model", model_with_default, "--num-prompts", "2", "--steps", "2",
                     "--size", "32", "--vq-images", "0", "--token-temperature", "0.5", "--out", str(out)])
    assert code == 0
    recorded = json.loads(out.read_text())["settings"]["sampler_options"]
    assert recorded == SamplerOptions(guidance_interval=(0.0, 0.5), token_temperature=0.5).to_dict()


def test_eval_world_images_do_not_depend_on_the_batch_size(model, tmp_path, eval_dispatcher):
    """Image i is seeded with seed + i, as in `eval compare`, whatever batch it falls in."""
    for batch_size in ("1", "3"):
        code = cli.main(["eval", "world", "--model", model, "--num-prompts", "3", "--steps", "2", "--size", "32",
                         "--vq-images", "0", "--batch-size", batch_size, "--out", str(tmp_path / f"{batch_size}.json"),
                         "--save-images", str(tmp_path / batch_size)])
        assert code == 0
    for i in range(3):
        one, three = (np.asarray(PIL.Image.open(tmp_path / b / f"{i:05d}.png")) for b in ("1", "3"))
        assert np.array_equal(one, three)


def test_eval_world_passes_the_gumbel_temperature(model, tmp_path, eval_dispatcher):
    """`--temperature` reaches the pipeline: the saved images are the pipeline's own at that temperature."""
    import torch

    from meissonic import MeissonicPipeline
    from meissonic.world import heldout_tasks

    for name, temperature in (("default", []), ("cold", ["--temperature", "0", "0"])):
        code = cli.main(["eval", "world", "--model", model, "--num-prompts", "2", "--steps", "4", "--size", "32",
                         "--vq-images", "0", "--out", str(tmp_path / f"{name}.json"),
                         "--save-images", str(tmp_path / name), *temperature])
        assert code == 0
    pipe = MeissonicPipeline.from_pretrained(model, torch_dtype=torch.bfloat16)
    tasks = heldout_tasks(2, 0)
    for i, task in enumerate(tasks):
        for name, temperature in (("default", (2.0, 0.0)), ("cold", (0.0, 0.0))):
            image = pipe(task.text, height=32, width=32, num_inference_steps=4,
                         generator=torch.Generator().manual_seed(i), temperature=temperature).images[0]
            saved = np.asarray(PIL.Image.open(tmp_path / name / f"{i:05d}.png"))
            assert np.array_equal(np.asarray(image), saved), (name, i)
    assert any(not np.array_equal(*(np.asarray(PIL.Image.open(tmp_path / n / f"{i:05d}.png"))
                                    for n in ("default", "cold"))) for i in range(2))  # it changes the images
    recorded = json.loads((tmp_path / "cold.json").read_text())["settings"]["temperature"]
    assert recorded == [0.0, 0.0]
