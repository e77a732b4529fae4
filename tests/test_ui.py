"""The web UI's controls and callbacks: every slider value works, every tab generates, options follow the pipeline."""

from __future__ import annotations

import argparse
import inspect
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
gr = pytest.importorskip("gradio")

import PIL.Image  # noqa: E402

from meissonic.interfaces.ui import MeissonicUI, build_ui, painted_mask  # noqa: E402
from meissonic.testing import build_tiny_pipeline_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(folder):
    from meissonic.pipelines import MeissonicPipeline

    return MeissonicPipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def demo(pipe):
    return build_ui(pipe, max_images=3)


def defaults(controls: dict) -> dict:
    """The value each control starts with."""
    return {name: component.value for name, component in controls.items()}


def fast(values: dict) -> dict:
    return {**values, "prompt": "a red circle", "steps": 1}


def test_sliders_start_at_valid_values(demo, pipe):
    ui = demo.meissonic
    stride = pipe.stride
    assert set(ui.controls) == {"text2image", "img2img", "inpaint", "outpaint"}
    for task, controls in ui.controls.items():
        for side in ("width", "height"):
            slider = controls[side]
            assert (slider.minimum, slider.step, slider.value) == (stride, stride, pipe.config.default_resolution)
            assert slider.maximum % stride == 0 and slider.maximum >= slider.value
        assert controls["steps"].minimum == 1 and controls["steps"].step == 1
        assert controls["guidance_scale"].minimum == 0
        assert controls["num_images"].minimum == 1 and controls["num_images"].maximum == 3
        assert controls["steps"].value == ui.tasks[task].steps  # the pipelines' own defaults
    assert ui.controls["text2image"]["steps"].value == 48 and ui.controls["img2img"]["steps"].value == 12
    assert ui.controls["outpaint"]["extend_left"].step == stride
    assert ui.controls["outpaint"]["extend_left"].maximum % stride == 0


def test_advanced_controls_come_from_the_pipeline_signature(demo):
    ui = demo.meissonic
    for task, options in ui.options.items():
        names = {o.name for o in options}
        assert {"temperature", "masking_schedule", "micro_conditioning_aesthetic_score"} <= names
        controls = ui.controls[task]
        assert {"temperature.start", "temperature.end", "masking_schedule"} <= set(controls)
        for option in options:  # one control (two for a pair) per option
            assert option.name in controls or f"{option.name}.start" in controls
    assert ui.controls["inpaint"]["masking_schedule"].value == "linear"
    assert all(isinstance(c, gr.Slider) for c in (ui.controls["text2image"]["temperature.start"],))


@pytest.mark.parametrize("task", ["text2image", "outpaint"])
def test_every_slider_extreme_generates(demo, task):
    """The reference app broke at most of its slider values. Here all sliders at their minimum, all at their maximum,
    and each size slider alone at either end must generate images of the size the sliders say."""
    ui = demo.meissonic
    controls = ui.controls[task]
    base = fast(defaults(controls))
    if task == "outpaint":
        base["image"] = PIL.Image.new("RGB", (20, 28), (10, 200, 10))  # any size: resized to the sliders
    sliders = {name: c for name, c in controls.items() if isinstance(c, gr.Slider) and name != "steps"}
    extremes = [{name: c.minimum for name, c in sliders.items()}, {name: c.maximum for name, c in sliders.items()}]
    sizes = [name for name in sliders if name in ("width", "height") or name.startswith("extend_")]
    extremes += [{name: getattr(sliders[name], end)} for name in sizes for end in ("minimum", "maximum")]
    for change in extremes:
        values = {**base, **change}
        if task == "outpaint" and not any(values[f"extend_{s}"] for s in ("left", "right", "top", "bottom")):
            values["extend_right"] = ui.stride  # extending by nothing on every side is refused with a message
        images, settings = ui.generate(task, values)
        assert len(images) == int(values["num_images"])
        extend = settings.get("extend (left, right, top, bottom)", [0, 0, 0, 0])
        assert images[0].size == (values["width"] + extend[0] + extend[1],
                                  values["height"] + extend[2] + extend[3]), change
    images, _ = ui.generate(task, {**base, "steps": controls["steps"].minimum, "guidance_scale": 0})
    assert len(images) == 1


def test_image_editing_tabs(demo):
    ui = demo.meissonic
    photo = PIL.Image.new("RGB", (40, 24), (200, 30, 30))
    values = fast(defaults(ui.controls["img2img"]))
    images, settings = ui.generate("img2img", {**values, "image": photo, "strength": 0.05, "width": 48})
    assert images[0].size == (48, 32) and settings["strength"] == 0.05
    layer = PIL.Image.new("RGBA", photo.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 16, 16))  # a painted stroke
    editor = {"background": photo, "layers": [layer], "composite": photo}
    values = fast(defaults(ui.controls["inpaint"]))
    images, _ = ui.generate("inpaint", {**values, "editor": editor, "num_images": 2})
    assert [image.size for image in images] == [(32, 32), (32, 32)]
    with pytest.raises(ValueError, match="paint"):
        ui.generate("inpaint", {**values, "editor": {"background": photo, "layers": [], "composite": photo}})
    with pytest.raises(ValueError, match="upload"):
        ui.generate("img2img", fast(defaults(ui.controls["img2img"])))
    with pytest.raises(ValueError, match="prompt"):
        ui.generate("text2image", {**fast(defaults(ui.controls["text2image"])), "prompt": " "})


def test_painted_mask_marks_painted_pixels():
    background = PIL.Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    layer = PIL.Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.putpixel((3, 4), (255, 255, 255, 255))
    image, mask = painted_mask({"background": background, "layers": [layer]})
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (0, 0, 255)
    assert mask.getpixel((3, 4)) == 255 and mask.getpixel((0, 0)) == 0


def test_seed_is_reproducible_and_progress_is_reported(demo):
    ui = demo.meissonic
    values = {**fast(defaults(ui.controls["text2image"])), "steps": 3, "seed": 7}
    reports = []
    first, settings = ui.generate("text2image", values, progress=lambda fraction, desc: reports.append(fraction))
    second, _ = ui.generate("text2image", values)
    assert first[0].tobytes() == second[0].tobytes() and settings["seed"] == 7
    assert reports == pytest.approx([1 / 3, 2 / 3, 1.0])
    _, random_settings = ui.generate("text2image", {**values, "randomize_seed": True})
    assert 0 <= random_settings["seed"] < 2**31


def test_new_pipeline_keywords_become_controls(pipe, monkeypatch):
    """A keyword argument added to __call__ (as the enhanced-inference options will be) becomes a control."""
    from meissonic.pipelines import MeissonicPipeline

    original = MeissonicPipeline.__call__
    seen = []

    def patched(self, *args, noise_regularization: bool = False, **kwargs):
        seen.append(noise_regularization)
        return original(self, *args, **kwargs)

    parameters = list(inspect.signature(original).parameters.values())
    extra = inspect.Parameter("noise_regularization", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)
    variadic = [p for p in parameters if p.kind == p.VAR_KEYWORD]
    parameters = [p for p in parameters if p.kind != p.VAR_KEYWORD]
    patched.__signature__ = inspect.signature(original).replace(parameters=[*parameters, extra, *variadic])
    monkeypatch.setattr(MeissonicPipeline, "__call__", patched)
    ui = MeissonicUI(pipe)
    option = {o.name: o for o in ui.options["text2image"]}["noise_regularization"]
    assert option.kind == "bool" and "noise_regularization" not in {o.name for o in ui.options["img2img"]}
    values = {"prompt": "x", "steps": 1, "guidance_scale": 0, "seed": 0, "num_images": 1, "width": 32,
              "height": 32, "noise_regularization": True}
    ui.generate("text2image", values)
    assert seen == [True]


def test_ui_command(folder, is_embedded_model):
    from meissonic.interfaces.commands import ui as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--model", str(folder), "--max-images", "2", "--max-size", "48"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    demo = command.build(args)
    assert demo.meissonic.max_size == 48 and demo.meissonic.controls["text2image"]["num_images"].maximum == 2
    embedded = command.build(parser.parse_args([]))  # no --model: the embedded default model
    assert is_embedded_model(embedded.meissonic.service.pipeline)


def test_text2image_controls_start_at_the_model_sampler(folder):
    """A checkpoint's `default_sampler` sets the text-to-image controls' initial values (the UI sends every control
    as shown), the command's flags replace it, and the editing tabs keep vanilla decoding."""
    from meissonic.pipelines import MeissonicPipeline
    from meissonic.sampling.options import SamplerOptions

    guided_early = MeissonicPipeline.from_pretrained(folder, default_sampler={"guidance_interval": (0.0, 0.5)})
    ui = build_ui(guided_early).meissonic
    start = {task: {o.name: o.default for o in options}["guidance_interval"] for task, options in ui.options.items()}
    assert start == {"text2image": (0.0, 0.5), "img2img": (0.0, 1.0), "inpaint": (0.0, 1.0), "outpaint": (0.0, 1.0)}
    values = {**defaults(ui.controls["text2image"]), "prompt": "a red circle"}
    kwargs, _ = ui.pipeline_kwargs("text2image", values)
    assert kwargs["sampler"] == SamplerOptions(guidance_interval=(0.0, 0.5))
    flagged = MeissonicUI(guided_early, sampler_defaults=vars(SamplerOptions()))  # `meissonic ui --sampler vanilla`
    assert {o.name: o.default for o in flagged.options["text2image"]}["guidance_interval"] == (0.0, 1.0)


def test_settings_show_the_prompt_the_model_reads(folder):
    """With `prompt_rewrites` in the checkpoint, a result's settings show the restated prompt beside the typed one."""
    from meissonic.pipelines import MeissonicPipeline

    rule = [r"^a (\w+) below a (\w+)$", r"a \2 above a \1"]
    rewriting = MeissonicPipeline.from_pretrained(folder, prompt_rewrites=[rule])
    ui = build_ui(rewriting).meissonic
    values = defaults(ui.controls["text2image"])
    _, settings = ui.pipeline_kwargs("text2image", {**values, "prompt": "a cat below a dog"})
    assert settings["prompt"] == "a cat below a dog"
    assert settings["prompt as the model reads it"] == "a dog above a cat"
    _, settings = ui.pipeline_kwargs("text2image", {**values, "prompt": "a cat above a dog"})
    assert "prompt as the model reads it" not in settings
