"""The world generator: determinism, captions, held-out split, layout, detector, dataset writer, CLI."""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from meissonic.eval.world import detector_agreement
from meissonic.world import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_ARRANGEMENTS,
    HELDOUT_COUNTS,
    HELDOUT_PAIRS,
    KINDS,
    ObjectSpec,
    Scene,
    caption,
    detect,
    heldout_tasks,
    is_heldout,
    parse_caption,
    render,
    sample_scene,
    training_example,
    training_scene,
    training_tasks,
    write_dataset,
)
from meissonic.world.captions import restate
from meissonic.world.scene import arrangement


def scenes(seed: int, n: int, sampler=sample_scene) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sampler(rng) for _ in range(n)]


def test_palette_is_well_separated():
    rgb = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), dtype=float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert dist.min() >= 90


def test_determinism_from_seed():
    a, b = scenes(7, 50), scenes(7, 50)
    assert a == b and a != scenes(8, 50)
    assert np.array_equal(np.asarray(render(a[0])), np.asarray(render(b[0])))
    assert [t.text for t in heldout_tasks(12, 3)] == [t.text for t in heldout_tasks(12, 3)]
    assert [t.text for t in training_tasks(12, 3)] != [t.text for t in training_tasks(12, 4)]
    assert training_example(5, seed=1) == training_example(5, seed=1)


def test_scene_json_roundtrip():
    for scene in scenes(1, 40):
        assert Scene.from_dict(json.loads(scene.to_json())) == scene
    for task in heldout_tasks(8, 0):
        assert type(task).from_dict(json.loads(json.dumps(task.to_dict()))) == task


def test_captions_state_exactly_the_scene():
    rng = np.random.default_rng(0)
    texts = set()
    for scene in scenes(2, 400):
        groups = tuple(ObjectSpec(k, c, n) for k, c, n in scene.groups())
        for _ in range(3):
            text = caption(scene, rng)
            texts.add(text)
            parsed = parse_caption(text)
            assert parsed.objects == groups, text
            assert parsed.relation == scene.relation, text
            assert parsed.background in (None, scene.background), text
            assert parsed.task_type == scene.scene_type, text
        forced = caption(scene, rng, mention_background=True)
        assert parse_caption(forced).background == scene.background
        assert parse_caption(caption(scene, rng, mention_background=False)).background is None
    assert len(texts) > 900  # paraphrases really vary


def test_caption_examples():
    parsed = parse_caption("a yellow star to the left of a purple circle on a white background")
    assert parsed.objects == (ObjectSpec("star", "yellow"), ObjectSpec("circle", "purple"))
    assert parsed.relation.relation == "left of" and parsed.background == "white"
    assert parse_caption("two green triangles").objects == (ObjectSpec("triangle", "green", 2),)
    with pytest.raises(ValueError):
        parse_caption("a cat")


def test_layout_rewrites_restate_the_scene():
    """Every caption of the grammar is restated as one scene it allows, in the layout and phrasing the default model
    draws best: "right of" / "below" with the objects swapped, every relation as "left of" / "placed above", a pair
    ("A and B") and a counted group ("two A", "three A") split in two side by side, an unsized group of three as
    large, and an unstated background as black. Frame, kinds, colours, counts and stated sizes are kept; renders of
    the original scene satisfy a restatement of the same scene; the rules are a normal form (restating twice changes
    nothing); other text is left alone."""
    import dataclasses
    import re

    from meissonic.eval.world import check_task
    from meissonic.world.captions import SIZE_WORDS, STATED_RELATIONS, UNSTATED_BACKGROUND, UNSTATED_SIZE_OF_THREE

    size_word = re.compile(r"\b({}) ".format("|".join(w for words in SIZE_WORDS.values() for w in words)))

    def total(task):  # shapes of each kind and colour
        shapes = Counter()
        for o in task.objects:
            shapes[(o.kind, o.colour)] += o.count
        return shapes

    rng = np.random.default_rng(5)
    counts = Counter()
    for scene in scenes(6, 600):
        for text in (caption(scene, rng), caption(scene, rng, mention_background=True, mention_size=True)):
            new, old = restate(text), parse_caption(text)
            task = parse_caption(new)
            assert restate(text.upper()).lower() == new and restate(new) == new, (text, new)
            assert total(task) == total(old), (text, new)
            assert task.background == (old.background or UNSTATED_BACKGROUND), (text, new)
            same_scene = True
            if old.task_type == "count" and old.objects[0].count in (2, 3):
                one, rest = (dataclasses.replace(old.objects[0], count=n) for n in (1, old.objects[0].count - 1))
                assert task.objects == (rest, one) and task.relation.relation == "left of", (text, new)
                # Both halves keep the stated size; an unsized group of three is stated large.
                stated = size_word.findall(text)
                if old.objects[0].count == 3 and not stated:
                    stated = [UNSTATED_SIZE_OF_THREE]
                assert size_word.findall(new) == 2 * stated, (text, new)
                counts[f"count {old.objects[0].count}"] += 1
                same_scene = False
            elif old.task_type == "pair":
                assert task.objects == old.objects and task.relation.relation == "left of", (text, new)
                counts["pair"] += 1
                same_scene = False
            elif old.relation is not None:
                phrase, swapped = STATED_RELATIONS[old.relation.relation]
                assert f" {phrase} " in new and task.objects == (old.objects[::-1] if swapped else old.objects)
                assert task.relation.relation == {"right of": "left of", "below": "above"}.get(
                    old.relation.relation, old.relation.relation), (text, new)
                counts["swapped" if swapped else "relation"] += 1
            else:
                assert new == (text if old.background else f"{text} on a black background"), (text, new)
                counts["kept"] += 1
            if same_scene and counts["checked"] < 100:
                drawn = detect(render(scene))
                assert check_task(dataclasses.replace(task, background=old.background), drawn).correct, (text, new)
                counts["checked"] += 1
    restated = ("count 2", "count 3", "pair", "swapped", "relation")
    assert min(counts[k] for k in restated) > 50 and counts["kept"] > 300, counts
    examples = {
        "a red circle right of a blue square, white background": "a blue square left of a red circle, white background",
        "a drawing of two small red stars beneath one blue circle, gray background":
            "a drawing of one blue circle placed above two small red stars, gray background",
        "a red circle together with a blue square": "a red circle left of a blue square on a black background",
        "An image of two orange stars": "An image of an orange star left of an orange star on a black background",
        "two big green squares against a white background":
            "a big green square left of a big green square against a white background",
        "three orange circles, gray background":
            "two large orange circles left of a large orange circle, gray background",
        "three small orange circles": "two small orange circles left of a small orange circle on a black background",
        "four purple circles": "four purple circles on a black background",
        "a cat right of a dog": "a cat right of a dog",  # outside the grammar: as typed
    }
    for typed, restated in examples.items():
        assert restate(typed) == restated, typed


def test_layout_inside_image_without_overlap():
    for scene in scenes(3, 1000):
        assert 1 <= len(scene.objects) <= 4
        for o in scene.objects:
            assert o.extent / 2 <= o.cx <= 1 - o.extent / 2 and o.extent / 2 <= o.cy <= 1 - o.extent / 2
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                gap = max(abs(a.cx - b.cx), abs(a.cy - b.cy)) - (a.extent + b.extent) / 2
                assert gap > 0.02
        if scene.relation is not None:
            a, b = scene.objects[scene.relation.a], scene.objects[scene.relation.b]
            dx, dy = b.cx - a.cx, b.cy - a.cy
            expected = {
                "left of": dx > abs(dy),
                "right of": -dx > abs(dy),
                "above": dy > abs(dx),
                "below": -dy > abs(dx),
            }
            assert expected[scene.relation.relation]
    assert min(s for s in (o.extent for sc in scenes(3, 50) for o in sc.objects)) >= 0.2


def test_training_scenes_never_contain_heldout_compositions():
    train = scenes(4, 3000, training_scene)
    for scene in train:
        for o in scene.objects:  # checked here independently of is_heldout
            assert (o.colour, o.kind) not in HELDOUT_PAIRS
        kinds = Counter(o.kind for o in scene.objects)
        assert not any((n, k) in HELDOUT_COUNTS for k, n in kinds.items())
        if len(scene.objects) == 2:
            assert arrangement(*scene.objects) not in HELDOUT_ARRANGEMENTS
    # ... while the rest of the world is covered: every other colour-kind pair and every scene type occurs.
    seen = {(o.colour, o.kind) for s in train for o in s.objects}
    assert seen == {(c, k) for c in COLOURS for k in KINDS} - HELDOUT_PAIRS
    assert {s.scene_type for s in train} == {"single", "count", "pair", "position"}


def test_heldout_tasks_all_heldout_and_cover_every_family():
    tasks = heldout_tasks(400, seed=0)
    assert all(is_heldout(t.scene) for t in tasks)
    pairs = {(o.colour, o.kind) for t in tasks for o in t.scene.objects}
    assert HELDOUT_PAIRS <= pairs
    assert any(Counter(o.kind for o in t.scene.objects)[k] == n for t in tasks for n, k in HELDOUT_COUNTS)
    arrangements = {arrangement(*t.scene.objects) for t in tasks if len(t.scene.objects) == 2}
    assert HELDOUT_ARRANGEMENTS <= arrangements
    assert Counter(t.task_type for t in tasks) == {"single": 100, "count": 100, "pair": 100, "position": 100}
    assert not any(is_heldout(t.scene) for t in training_tasks(200, seed=0))


def test_detector_reads_renders_exactly():
    """300 clean renders: every attribute read back correctly at least 99% of the time."""
    sample = scenes(11, 300)
    acc = detector_agreement(sample, [render(s) for s in sample])
    for name in ("background", "count", "kind", "colour", "centre", "scene"):
        assert acc[name] >= 0.99, acc


@pytest.mark.parametrize("corruption", ["noise", "jpeg", "blur"])
def test_detector_tolerates_noise(corruption):
    rng = np.random.default_rng(0)
    sample = scenes(12, 60)
    images = []
    for scene in sample:
        image = render(scene)
        if corruption == "noise":  # gaussian noise, sigma 20/255
            image = np.clip(np.asarray(image, np.float32) + rng.normal(0, 20, (256, 256, 3)), 0, 255)
        elif corruption == "jpeg":  # heavy JPEG, quality 20
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=20)
            image = Image.open(buffer)
        else:  # 4x down- and up-sampling, like a coarse decoder
            image = image.resize((64, 64), Image.Resampling.BILINEAR).resize(
                (256, 256), Image.Resampling.BICUBIC
            )
        images.append(image)
    acc = detector_agreement(sample, images)
    assert acc["scene"] >= 0.95, acc


def test_detector_ignores_specks_and_accepts_arrays():
    scene = scenes(13, 1)[0]
    arr = np.asarray(render(scene)).copy()
    arr[5:8, 5:8] = COLOURS["red"]  # a 3x3 speck is not an object
    detected = detect(arr)
    assert len(detected.objects) == len(scene.objects)
    assert detect(arr.astype(np.float32) / 255.0).objects == detected.objects


def test_write_dataset_deterministic_and_resumable(tmp_path):
    write_dataset(tmp_path / "a", 6, seed=3)
    write_dataset(tmp_path / "b", 3, seed=3)
    with open(tmp_path / "b" / "metadata.jsonl", "a") as f:
        f.write('{"file_name": "0000003.png", "te')  # an interrupted write
    write_dataset(tmp_path / "b", 6, seed=3)
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metadata.jsonl").read_text().splitlines()]
    assert rows_a == rows_b and len(rows_a) == 6
    for row in rows_a:
        scene = Scene.from_dict(json.loads(row["scene"]))
        assert not is_heldout(scene)
        assert row["text"] == row["captions"][0]
        assert parse_caption(row["text"]).objects == tuple(ObjectSpec(*g) for g in scene.groups())
        image_a = Image.open(tmp_path / "a" / row["file_name"])
        assert image_a.size == (256, 256)
        assert np.array_equal(np.asarray(image_a), np.asarray(Image.open(tmp_path / "b" / row["file_name"])))
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "a", 6, seed=4)
    with pytest.raises(ValueError, match="at least 1"):
        write_dataset(tmp_path / "empty", 0)
    assert not (tmp_path / "empty").exists()


def test_scene_weights_set_the_mix_of_scene_types(tmp_path):
    weights = {"position": 3, "single": 1}
    types = Counter(training_example(i, seed=2, scene_weights=weights)[0].scene_type for i in range(600))
    assert set(types) == {"position", "single"}
    assert 0.68 < types["position"] / 600 < 0.82
    unweighted = Counter(training_example(i, seed=2)[0].scene_type for i in range(600))
    assert set(unweighted) == {"single", "count", "pair", "position"}
    for bad in ({"triangle": 1}, {"position": -1}, {"position": 0}, {"position": float("nan")}):
        with pytest.raises(ValueError):
            training_example(0, scene_weights=bad)
    write_dataset(tmp_path, 2, seed=2, scene_weights=weights)
    rows = [json.loads(x) for x in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == [training_example(i, 2, 4, weights)[1][0] for i in range(2)]
    with pytest.raises(ValueError, match="other settings"):  # resuming must not mix two streams in one folder
        write_dataset(tmp_path, 4, seed=2)
    assert len((tmp_path / "metadata.jsonl").read_text().splitlines()) == 2


def test_shuffled_pairs_name_either_object_first(tmp_path):
    def first_named_leads(scene) -> bool:  # the first-named object is the left (or top) one
        a, b = scene.objects
        return a.cx < b.cx if arrangement(a, b)[0] == "horizontal" else a.cy < b.cy

    leads, shuffled_leads, pairs = 0, 0, 0
    for i in range(400):
        (scene, texts), (shuffled, shuffled_texts) = training_example(i, 4), training_example(i, 4, shuffle_pairs=True)
        if scene.scene_type != "pair":
            assert (shuffled, shuffled_texts) == (scene, texts)  # other scene types keep the stream
            continue
        pairs += 1
        assert render(shuffled, 64).tobytes() == render(scene, 64).tobytes()  # same image, names reordered
        assert set(shuffled.objects) == set(scene.objects)
        first = shuffled.objects[0]
        assert all(t.index(first.colour) < t.index(shuffled.objects[1].colour) or first.colour ==
                   shuffled.objects[1].colour for t in shuffled_texts)  # captions name objects[0] first
        leads += first_named_leads(scene)
        shuffled_leads += first_named_leads(shuffled)
    assert pairs > 60 and leads == pairs  # by default the caption order is the layout order
    assert 0.35 < shuffled_leads / pairs < 0.65
    write_dataset(tmp_path, 2, seed=4, shuffle_pairs=True)
    assert json.loads((tmp_path / "world.json").read_text())["shuffle_pairs"] is True
    with pytest.raises(ValueError, match="other settings"):
        write_dataset(tmp_path, 3, seed=4)


def test_world_cli(tmp_path, capsys):
    from meissonic.interfaces.commands import world

    parser = argparse.ArgumentParser()
    world.add_arguments(parser)
    assert world.run(parser.parse_args(["render", "--out", str(tmp_path), "--num", "3", "--seed", "1"])) == 0
    assert len((tmp_path / "metadata.jsonl").read_text().splitlines()) == 3
    args = ["render", "--out", str(tmp_path / "w"), "--num", "2", "--scene-weights", "position=2,pair=1"]
    assert world.run(parser.parse_args(args)) == 0
    assert json.loads((tmp_path / "w" / "world.json").read_text())["scene_weights"] == {"position": 2, "pair": 1}
    assert world.run(parser.parse_args(["render", "--out", str(tmp_path / "s"), "--num", "1", "--shuffle-pairs"])) == 0
    assert json.loads((tmp_path / "s" / "world.json").read_text())["shuffle_pairs"] is True
    for bad in ("position", "position=x", "circle=1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["render", "--out", str(tmp_path), "--num", "1", "--scene-weights", bad])
    capsys.readouterr()
    assert world.run(parser.parse_args(["sample", "--num", "4", "--split", "heldout"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [t.text for t in heldout_tasks(4, 0)]
