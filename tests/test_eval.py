"""Evaluator scores, fidelity metrics, pluggable CLIP scorers (tiny random models) and the eval CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

from meissonic.eval import psnr, reconstruction_psnr, relation_holds, score, ssim
from meissonic.sampling.options import SamplerOptions
from meissonic.world import COLOURS, Scene, heldout_tasks, render, training_tasks
from meissonic.world.detect import Detection

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def mutated(scene: Scene, **changes) -> Scene:
    return dataclasses.replace(scene, **changes)


def test_perfect_renders_score_one():
    tasks = heldout_tasks(24, seed=1) + training_tasks(24, seed=1)
    result = score([render(t.scene) for t in tasks], tasks)
    assert result["overall"] == 1.0
    assert result["categories"] == {c: 1.0 for c in ("kind", "colour", "count", "position", "background")}
    assert set(result["task_types"]) == {"single", "count", "pair", "position"}
    assert result["num_tasks"] == 48


def test_chance_scores_the_images_against_other_prompts():
    tasks = heldout_tasks(24, seed=1)
    renders = [render(t.scene) for t in tasks]
    result = score(renders, tasks, chance_shifts=3)
    assert result["chance"]["shifts"] == 3
    # Each render against the next 3 tasks: right only where those tasks happen to ask for the same thing.
    for name, value in result["chance"]["categories"].items():
        assert value < 0.7, (name, result["chance"])
    assert result["chance"]["overall"] < 0.1
    # Images that ignore their prompt (one render for every task) score exactly their chance level.
    same = score([renders[0]] * len(tasks), tasks, chance_shifts=3)
    assert same["chance"]["categories"] == pytest.approx(same["categories"], abs=1e-9)
    assert "chance" not in score(renders[:1], tasks[:1], chance_shifts=3)  # no other prompt to compare with


def test_wrong_scenes_fail_in_their_category():
    tasks = heldout_tasks(40, seed=2)
    wrong_colour, wrong_count, swapped, wrong_bg = [], [], [], []
    for t in tasks:
        s = t.scene
        used = {o.colour for o in s.objects}
        other = next(c for c in COLOURS if c not in used)
        wrong_colour.append(
            mutated(s, objects=tuple(dataclasses.replace(o, colour=other) for o in s.objects))
        )
        wrong_count.append(mutated(s, objects=s.objects[:-1]))  # one object fewer (none for single tasks)
        mirrored = tuple(dataclasses.replace(o, cx=1 - o.cx, cy=1 - o.cy) for o in s.objects)
        swapped.append(mutated(s, objects=mirrored))
        wrong_bg.append(mutated(s, background="black" if s.background != "black" else "white"))

    r = score([render(s) for s in wrong_colour], tasks)
    assert r["categories"]["colour"] == 0.0 and r["categories"]["kind"] == 1.0 and r["overall"] == 0.0
    r = score([render(s) for s in wrong_count], tasks)
    assert r["categories"]["count"] == 0.0 and r["overall"] == 0.0
    r = score([render(s) for s in swapped], tasks)
    assert r["categories"]["position"] == 0.0
    assert r["categories"]["kind"] == r["categories"]["colour"] == r["categories"]["count"] == 1.0
    assert r["task_types"]["position"] == 0.0 and r["task_types"]["single"] == 1.0
    r = score([render(s) for s in wrong_bg], tasks)
    assert r["categories"]["background"] == 0.0 and r["categories"]["colour"] == 1.0


def test_attribute_binding_counts_in_overall():
    task = next(
        t
        for t in heldout_tasks(40, seed=3)
        if t.task_type == "pair"
        and t.objects[0].kind != t.objects[1].kind
        and t.objects[0].colour != t.objects[1].colour
    )
    a, b = task.scene.objects
    swapped = mutated(
        task.scene, objects=(dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour))
    )
    r = score([render(swapped)], [task])
    assert r["categories"]["kind"] == r["categories"]["colour"] == 1.0 and r["overall"] == 0.0


def test_relation_holds():
    def d(x, y):
        return Detection("circle", "red", x, y, 0.2, 0.2, 0.03)

    assert relation_holds(d(0.2, 0.5), d(0.8, 0.55), "left of")
    assert not relation_holds(d(0.2, 0.5), d(0.8, 0.55), "right of")
    assert relation_holds(d(0.5, 0.2), d(0.45, 0.8), "above")
    assert relation_holds(d(0.5, 0.8), d(0.45, 0.2), "below")
    assert not relation_holds(d(0.2, 0.2), d(0.3, 0.8), "left of")  # mostly vertical: not "left of"
    with pytest.raises(ValueError):
        relation_holds(d(0, 0), d(1, 1), "near")
    with pytest.raises(ValueError):
        score([render(t.scene) for t in heldout_tasks(2)], heldout_tasks(3))


def test_psnr_and_ssim_known_values():
    zeros = np.zeros((32, 32, 3))
    assert psnr(zeros, zeros + 0.1) == pytest.approx(20.0)
    assert psnr(zeros, zeros) == float("inf")
    img = Image.fromarray(np.full((16, 16, 3), 51, np.uint8))  # 51/255 = 0.2
    assert psnr(img, np.full((16, 16, 3), 0.3)) == pytest.approx(20.0, abs=1e-6)
    torch = pytest.importorskip("torch")
    assert psnr(torch.zeros(3, 16, 16), torch.full((3, 16, 16), 0.01)) == pytest.approx(40.0, abs=1e-4)
    rng = np.random.default_rng(0)
    x = rng.random((64, 64, 3))
    assert ssim(x, x) == pytest.approx(1.0)
    light = ssim(x, np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1))
    heavy = ssim(x, np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1))
    assert 1.0 > light > heavy > 0.0
    assert ssim(x, 1 - x) < 0  # anti-correlated structure
    with pytest.raises(ValueError):
        psnr(zeros, np.zeros((16, 16, 3)))


def test_reconstruction_psnr_with_callable_and_tiny_vq():
    torch = pytest.importorskip("torch")
    images = [render(t.scene, 64) for t in training_tasks(3)]
    out = reconstruction_psnr(lambda x: x * 0 + 0.5, images, batch_size=2)
    expected = np.mean([psnr(im, np.full((64, 64, 3), 0.5)) for im in images])
    assert out["psnr"] == pytest.approx(expected, rel=1e-5) and out["num_images"] == 3
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vq = diffusers.VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=16,
        vq_embed_dim=4,
        norm_num_groups=4,
        sample_size=64,
    ).eval()
    out = reconstruction_psnr(vq, images)
    assert np.isfinite(out["psnr"]) and out["psnr"] > 0 and -1 <= out["ssim"] <= 1
    in_bf16 = reconstruction_psnr(vq.to(torch.bfloat16), images)  # a bf16 pipeline's VQ (eval world's default)
    assert abs(in_bf16["psnr"] - out["psnr"]) < 1.0


def test_vq_ceiling_reconstructions_are_scored_like_generations():
    """The reconstructions handed back are the VQ's output as images: an identity VQ keeps the detector's perfect
    score on renders, a VQ that greys everything out loses every object."""
    pytest.importorskip("torch")
    tasks = heldout_tasks(6, seed=2)
    images = [render(t.scene, 128) for t in tasks]
    kept: list = []
    reconstruction_psnr(lambda x: x, images, reconstructions=kept)
    assert [np.asarray(k).tolist() for k in kept] == [np.asarray(im).tolist() for im in images]
    assert score(kept, tasks)["overall"] == 1.0
    greyed: list = []
    reconstruction_psnr(lambda x: x * 0 + 0.5, images, reconstructions=greyed)
    assert score(greyed, tasks)["categories"]["kind"] == 0.0


def build_tiny_clip(folder):
    """A random CLIP (2 layers, width 32) with a byte-level tokenizer, saved as safetensors."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    codes = printable + [256 + i for i, _ in enumerate(b for b in range(256) if b not in printable)]
    chars = [chr(c) for c in codes]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(0)
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder


def test_pluggable_clip_scorers_with_tiny_random_model(tmp_path):
    pytest.importorskip("transformers")
    from meissonic.eval.scorers import ClipScorer, PreferenceScorer, load_scorer

    folder = build_tiny_clip(tmp_path / "clip")
    images = [render(t.scene, 64) for t in training_tasks(3)]
    texts = [t.text for t in training_tasks(3)]
    clip, hps = load_scorer("clip", folder), load_scorer("hps", folder)
    assert isinstance(clip, ClipScorer) and isinstance(hps, PreferenceScorer)
    cos = clip.cosine(images, texts, batch_size=2)
    assert cos.shape == (3,) and np.all(np.abs(cos) <= 1 + 1e-6)
    np.testing.assert_allclose(clip(images, texts), 100 * np.maximum(cos, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hps(images, texts), 100 * cos, rtol=1e-5, atol=1e-5)
    assert not np.allclose(cos, cos[0])  # different pairs, different similarities
    with pytest.raises(ValueError):
        load_scorer("fid", folder)
    with pytest.raises(ValueError):
        clip(images, texts[:2])
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        load_scorer("clip", folder)


class _FakePipeline:
    """Stands in for MeissonicPipeline: 'generates' the exact render of each prompt's task."""

    def __init__(self, scenes):
        self.scenes = scenes
        self.config = types.SimpleNamespace(default_steps=16, default_guidance_scale=4.0, default_resolution=256)
        self.default_sampler_options = SamplerOptions(guidance_interval=(0.0, 0.5))

    def set_progress_bar_config(self, **kwargs):
        pass

    def sampling_defaults(self, num_inference_steps, guidance_scale):
        steps = 16 if num_inference_steps is None else num_inference_steps
        return steps, 4.0 if guidance_scale is None else guidance_scale

    loaded_from: list[str] = []

    @classmethod
    def from_pretrained(cls, folder, torch_dtype=None):
        cls.loaded_from.append(str(folder))
        tasks = heldout_tasks(8, seed=5)
        return cls({t.text: t.scene for t in tasks})

    def __call__(self, prompt, height, width, num_inference_steps, guidance_scale, generator, output_type, sampler,
                 temperature):
        assert output_type == "pil" and height == width == 256 and sampler == self.default_sampler_options
        assert temperature == (2.0, 0.0)
        return types.SimpleNamespace(images=[render(self.scenes[p], height) for p in prompt])


def test_eval_world_cli_end_to_end(tmp_path, monkeypatch, capsys):
    from meissonic.interfaces.commands import eval_world

    monkeypatch.setitem(
        sys.modules, "meissonic.pipelines", types.SimpleNamespace(MeissonicPipeline=_FakePipeline)
    )
    parser = argparse.ArgumentParser()
    eval_world.add_arguments(parser)
    model = tmp_path / "model"
    model.mkdir()
    out = tmp_path / "results.json"
    saved = tmp_path / "images"
    args = parser.parse_args(
        [
            "world",
            "--model",
            str(model),
            "--num-prompts",
            "8",
            "--seed",
            "5",
            "--out",
            str(out),
            "--save-images",
            str(saved),
            "--batch-size",
            "3",
        ]
    )
    assert eval_world.run(args) == 0
    result = json.loads(out.read_text())
    assert result["overall"] == 1.0 and result["num_tasks"] == 8 and result["split"] == "heldout"
    assert "overall=1.000" in capsys.readouterr().out
    args = parser.parse_args(["world", "--images", str(saved), "--out", str(tmp_path / "again.json")])
    assert eval_world.run(args) == 0
    assert json.loads((tmp_path / "again.json").read_text())["categories"] == result["categories"]


def _fake_eval_world(monkeypatch, argv: list[str]):
    """`eval_world` with `_FakePipeline` standing in for the pipeline (its loads recorded), and `argv` parsed."""
    from meissonic.interfaces.commands import eval_world

    monkeypatch.setitem(
        sys.modules, "meissonic.pipelines", types.SimpleNamespace(MeissonicPipeline=_FakePipeline)
    )
    _FakePipeline.loaded_from = []
    parser = argparse.ArgumentParser()
    eval_world.add_arguments(parser)
    return eval_world, parser.parse_args(["world", *argv])


def test_eval_world_without_model_uses_the_embedded_model(tmp_path, monkeypatch):
    from meissonic.interfaces.commands.common import default_model_folder

    out = tmp_path / "results.json"
    eval_world, args = _fake_eval_world(monkeypatch, ["--num-prompts", "2", "--seed", "5", "--vq-images", "0",
                                                      "--out", str(out)])
    assert eval_world.run(args) == 0
    assert _FakePipeline.loaded_from == [str(default_model_folder())]
    assert json.loads(out.read_text())["settings"]["model"] == str(default_model_folder())


@pytest.mark.parametrize("flag, value", [("--num-prompts", "0"), ("--num-prompts", "-3"), ("--batch-size", "0"),
                                         ("--candidates", "0"), ("--vq-images", "-1")])
def test_eval_world_refuses_bad_counts_before_loading(tmp_path, monkeypatch, flag, value):
    out = tmp_path / "results.json"
    eval_world, args = _fake_eval_world(monkeypatch, [flag, value, "--out", str(out)])
    with pytest.raises(ValueError, match=flag):
        eval_world.run(args)
    assert _FakePipeline.loaded_from == [] and not out.exists()


class _SeedDependentPipeline(_FakePipeline):
    """Draws the exact render when the image's seed is a multiple of 3, else a blank background (always wrong)."""

    seeds: list[int] = []

    def __call__(self, prompt, height, width, num_inference_steps, guidance_scale, generator, output_type, sampler,
                 temperature):
        seeds = [g.initial_seed() for g in generator]
        type(self).seeds.extend(seeds)
        return types.SimpleNamespace(images=[
            render(self.scenes[p], height) if s % 3 == 0 else Image.new("RGB", (height, width), "white")
            for p, s in zip(prompt, seeds, strict=True)])


def test_eval_world_candidates_report_pass_at_k(tmp_path, monkeypatch, capsys):
    from meissonic.interfaces.commands import eval_world

    monkeypatch.setitem(
        sys.modules, "meissonic.pipelines", types.SimpleNamespace(MeissonicPipeline=_SeedDependentPipeline)
    )
    _SeedDependentPipeline.seeds = []
    parser = argparse.ArgumentParser()
    eval_world.add_arguments(parser)
    (tmp_path / "model").mkdir()
    out = tmp_path / "results.json"
    common = ["world", "--model", str(tmp_path / "model"), "--num-prompts", "8", "--seed", "5", "--batch-size", "3"]
    assert eval_world.run(parser.parse_args([*common, "--out", str(out), "--candidates", "3"])) == 0
    result = json.loads(out.read_text())
    # Task i's candidate j is seeded 5 + 8 j + i: candidate 0 is right for i = 1, 4, 7, candidate 1 for i = 2, 5,
    # candidate 2 for i = 0, 3, 6; so one image gets 3/8 right and some image of three every task.
    assert _SeedDependentPipeline.seeds == list(range(5, 29))
    assert result["overall"] == 3 / 8
    assert result["pass_at_k"]["k"] == 3 and result["pass_at_k"]["overall"] == 1.0
    assert result["pass_at_k"]["mean_single"] == (3 / 8 + 2 / 8 + 3 / 8) / 3
    assert "pass@3" in capsys.readouterr().out
    # The main scores do not depend on the number of candidates.
    assert eval_world.run(parser.parse_args([*common, "--out", str(tmp_path / "one.json")])) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["tasks"] == result["tasks"] and "pass_at_k" not in one
    with pytest.raises(ValueError, match="--candidates"):
        eval_world.run(parser.parse_args([*common, "--candidates", "0"]))


def test_pass_at_k_requires_the_same_tasks():
    from meissonic.eval.world import pass_at_k

    run = {"overall": 0.5, "tasks": [{"text": "a", "task_type": "single", "correct": True},
                                     {"text": "b", "task_type": "count", "correct": False}]}
    other = {"overall": 0.5, "tasks": [{"text": "a", "task_type": "single", "correct": False},
                                       {"text": "b", "task_type": "count", "correct": True}]}
    result = pass_at_k([run, other])
    assert result["overall"] == 1.0 and result["task_types"] == {"count": 1.0, "single": 1.0}
    assert pass_at_k([run])["overall"] == 0.5
    with pytest.raises(ValueError, match="same tasks"):
        pass_at_k([run, {"overall": 0.0, "tasks": run["tasks"][::-1]}])
