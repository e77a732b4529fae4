"""The web UI (Gradio): text-to-image, image-to-image, inpainting with a painted mask and outpainting, a gallery
of results with their settings, and progress while sampling.

Every control is valid at every value: sizes step by the model's pixel stride from the stride up, steps start at 1,
guidance at 0. The advanced controls come from `sampler_options` (the pipelines' own keyword arguments), so new
sampler options appear here without changes.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image

from ..pipelines.base import MAX_SIDE
from .server.options import SamplerOption, check_settings, model_sampler_defaults, sampler_options, with_defaults
from .server.service import GenerationService

MAX_SEED = 2**31 - 1
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
HISTORY = 48  # results kept in the gallery
DEFAULT_LABEL = "model default"  # how a None choice is shown
# Gradio's default theme loads fonts from Google: use the system's fonts so the page makes no outside requests.
FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


@dataclass(frozen=True)
class Task:
    name: str
    label: str
    pipeline: str  # the service's pipeline
    steps: int
    guidance: float
    strength: float | None  # None: no strength control


def _defaults(pipeline_class) -> dict[str, Any]:
    defaults = {"num_inference_steps": 12, "guidance_scale": 10.0, "strength": 1.0}  # if a signature hides them
    for name, parameter in inspect.signature(pipeline_class.__call__).parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            defaults[name] = parameter.default
    return defaults


def tasks(pipeline=None) -> list[Task]:
    """The UI's tabs, with the pipelines' own default steps, guidance and strength (text-to-image: the
    checkpoint's `default_steps` / `default_guidance_scale` when `pipeline` is given)."""
    from ..pipelines import MeissonicImg2ImgPipeline, MeissonicInpaintPipeline, MeissonicPipeline
    from ..pipelines.base import RELEASED_GUIDANCE, RELEASED_STEPS

    t2i, i2i, inpaint = (_defaults(c) for c in (MeissonicPipeline, MeissonicImg2ImgPipeline, MeissonicInpaintPipeline))
    if t2i["num_inference_steps"] is None:
        t2i["num_inference_steps"] = pipeline.config.default_steps if pipeline is not None else RELEASED_STEPS
    if t2i["guidance_scale"] is None:
        t2i["guidance_scale"] = pipeline.config.default_guidance_scale if pipeline is not None else RELEASED_GUIDANCE
    return [
        Task("text2image", "Text to image", "text2image", t2i["num_inference_steps"], t2i["guidance_scale"], None),
        Task("img2img", "Image to image", "img2img", i2i["num_inference_steps"], i2i["guidance_scale"],
             i2i["strength"]),
        Task("inpaint", "Inpaint", "inpaint", inpaint["num_inference_steps"], inpaint["guidance_scale"],
             inpaint["strength"]),
        Task("outpaint", "Outpaint", "inpaint", inpaint["num_inference_steps"], inpaint["guidance_scale"],
             inpaint["strength"]),
    ]


def painted_mask(editor_value: dict | None) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """An ImageEditor value -> (RGB image, mask with white where any layer was painted)."""
    if not editor_value or editor_value.get("background") is None:
        raise ValueError("upload an image to inpaint")
    background = editor_value["background"].convert("RGBA")
    mask = np.zeros((background.height, background.width), dtype=bool)
    for layer in editor_value.get("layers") or []:
        alpha = layer.convert("RGBA").resize(background.size).getchannel("A")
        mask |= np.asarray(alpha) > 0
    if not mask.any():
        raise ValueError("paint the area to regenerate on the image")
    white = PIL.Image.new("RGB", background.size, (255, 255, 255))
    image = PIL.Image.alpha_composite(white.convert("RGBA"), background).convert("RGB")
    return image, PIL.Image.fromarray(mask.astype(np.uint8) * 255)


class MeissonicUI:
    """The callbacks behind the page, independent of Gradio so that tests can call them."""

    def __init__(self, pipeline, max_images: int = 4, max_size: int | None = None,
                 sampler_defaults: dict[str, Any] | None = None):
        from ..pipelines import MeissonicImg2ImgPipeline, MeissonicInpaintPipeline, MeissonicPipeline

        self.service = GenerationService(pipeline)
        self.rewrite_prompt = pipeline.rewrite_prompt  # the editing pipelines share its settings (from_pipe)
        self.stride = pipeline.stride
        self.resolution = pipeline.config.default_resolution
        size = max_size or min(2 * self.resolution, MAX_SIDE // 2)
        self.max_size = max(self.stride, size - size % self.stride)
        self.max_extend = max(self.stride, self.max_size // 2 - self.max_size // 2 % self.stride)
        self.max_images = max_images
        self.tasks = {task.name: task for task in tasks(pipeline)}
        classes = {"text2image": MeissonicPipeline, "img2img": MeissonicImg2ImgPipeline,
                   "inpaint": MeissonicInpaintPipeline}
        # initial values: the checkpoint's text-to-image sampler, then e.g. the enhanced-inference flags of
        # `meissonic ui` (a --sampler preset among them replaces the checkpoint's sampler whole)
        flags = sampler_defaults or {}
        self.options = {name: with_defaults(sampler_options(classes[task.pipeline]),
                                            {**model_sampler_defaults(pipeline, task.pipeline), **flags})
                        for name, task in self.tasks.items()}
        self.controls: dict[str, dict[str, Any]] = {}  # task -> control name -> Gradio component (set by build_ui)

    def pipeline_kwargs(self, task: str, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Control values (by name) -> (pipeline keyword arguments, the settings to show with the results)."""
        seed = secrets.randbelow(MAX_SEED) if values.get("randomize_seed") else int(values["seed"])
        count = int(values["num_images"])
        settings: dict[str, Any] = {
            "task": task, "prompt": values["prompt"], "negative_prompt": values.get("negative_prompt") or "",
            "width": int(values["width"]), "height": int(values["height"]), "steps": int(values["steps"]),
            "guidance_scale": float(values["guidance_scale"]), "seed": seed, "num_images": count,
        }
        read = self.rewrite_prompt(values["prompt"])
        if read != values["prompt"]:  # the checkpoint's prompt_rewrites restated it
            settings["prompt as the model reads it"] = read
        kwargs: dict[str, Any] = dict(
            prompt=values["prompt"], negative_prompt=settings["negative_prompt"] or None,
            num_inference_steps=settings["steps"], guidance_scale=settings["guidance_scale"],
            num_images_per_prompt=count,
        )
        if task != "outpaint":
            kwargs.update(width=settings["width"], height=settings["height"])
        if self.tasks[task].strength is not None:
            kwargs["strength"] = settings["strength"] = float(values["strength"])
        # a preset only fills in the controls (see build_ui): every field is sent as shown
        options = [option for option in self.options[task] if option.name != "preset"]
        chosen = {option.name: option_value(option, values) for option in options}
        kwargs.update(check_settings(options, chosen))
        settings.update(chosen)
        if task == "img2img":
            if values.get("image") is None:
                raise ValueError("upload an image to edit")
            kwargs["image"] = values["image"].convert("RGB")
        elif task == "inpaint":
            kwargs["image"], kwargs["mask_image"] = painted_mask(values.get("editor"))
        elif task == "outpaint":
            if values.get("image") is None:
                raise ValueError("upload an image to extend")
            extend = [int(values[f"extend_{side}"]) for side in ("left", "right", "top", "bottom")]
            if not any(extend):
                raise ValueError("choose how far to extend the image on at least one side")
            image = values["image"].convert("RGB").resize((settings["width"], settings["height"]),
                                                          PIL.Image.Resampling.LANCZOS)
            kwargs.update(image=image, extend=extend)
            settings["extend (left, right, top, bottom)"] = extend
        from .commands.common import generators

        kwargs["generator"] = generators(seed, count)
        return kwargs, settings

    def generate(self, task: str, values: dict[str, Any], progress=None) -> tuple[list, dict[str, Any]]:
        """Run one task; `progress(fraction, desc)` is called after each decoding step. Returns (images, settings)."""
        if not str(values.get("prompt") or "").strip():
            raise ValueError("enter a prompt")
        kwargs, settings = self.pipeline_kwargs(task, values)
        steps = settings["steps"]
        if progress is not None:
            def on_step(_pipe, step: int, _remaining: int, _state: dict) -> None:
                progress((step + 1) / steps, desc=f"step {step + 1} of {steps}")

            kwargs["callback_on_step_end"] = on_step
        images = self.service.run_sync(self.tasks[task].pipeline, kwargs)
        return images, settings


def option_value(option: SamplerOption, values: dict[str, Any]) -> Any:
    """The pipeline value of an advanced control (pairs have two controls, None choices a label)."""
    if option.kind == "pair":
        default = option.default if isinstance(option.default, tuple) else (option.default,) * 2
        return [values.get(f"{option.name}.start", default[0]), values.get(f"{option.name}.end", default[1])]
    value = values.get(option.name, option.default)
    if option.kind == "choice":
        return None if value == DEFAULT_LABEL else value
    if option.kind == "text":
        return value or option.default
    if option.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)  # sliders may report integers as floats
    return value


def caption(settings: dict[str, Any], index: int) -> str:
    return (f"{settings['task']} · seed {settings['seed'] + index} · {settings['steps']} steps · "
            f"cfg {settings['guidance_scale']:g} · {settings['prompt'][:80]}")


def build_ui(pipeline, max_images: int = 4, max_size: int | None = None,
             sampler_defaults: dict[str, Any] | None = None):
    """The Gradio Blocks app on a loaded text-to-image pipeline (the editing tabs share its weights).
    `sampler_defaults` (option name -> value) replace the pipelines' defaults as the controls' initial values."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    ui = MeissonicUI(pipeline, max_images=max_images, max_size=max_size, sampler_defaults=sampler_defaults)
    stride = ui.stride

    def option_controls(task: str) -> dict[str, Any]:
        controls = {}
        for option in ui.options[task]:
            key = f"{task}-{option.name}".replace("_", "-")
            if option.kind == "pair":
                start, end = option.default if isinstance(option.default, tuple) else (option.default,) * 2
                # an interval's start stays below its end: each slider alone cannot cross the other's default
                gap = option.step if option.name.endswith("_interval") else 0
                with gr.Row():
                    for part, value, low, high in (("start", start, option.minimum, option.maximum - gap),
                                                   ("end", end, option.minimum + gap, option.maximum)):
                        controls[f"{option.name}.{part}"] = gr.Slider(
                            low, high, value=value, step=option.step,
                            label=f"{option.label}: {part}", info=option.info, elem_id=f"{key}-{part}")
            elif option.kind == "choice":
                choices = [DEFAULT_LABEL if c is None else c for c in option.choices]
                value = DEFAULT_LABEL if option.default is None else option.default
                controls[option.name] = gr.Dropdown(choices, value=value, label=option.label, elem_id=key)
            elif option.kind == "bool":
                controls[option.name] = gr.Checkbox(value=bool(option.default), label=option.label, elem_id=key)
            elif option.kind in ("int", "float") and option.minimum is not None and option.maximum is not None:
                controls[option.name] = gr.Slider(option.minimum, option.maximum, value=option.default,
                                                  step=option.step or (1 if option.kind == "int" else None),
                                                  label=option.label, elem_id=key)
            elif option.kind in ("int", "float"):
                controls[option.name] = gr.Number(value=option.default, precision=0 if option.kind == "int" else None,
                                                  label=option.label, elem_id=key)
            else:
                controls[option.name] = gr.Textbox(value=option.default or "", label=option.label, elem_id=key)
        preset = next((o for o in ui.options[task] if o.name == "preset" and o.owner is not None), None)
        if preset is not None:
            fields = [o for o in ui.options[task] if o.target == preset.target and o is not preset]
            outputs = [controls[n] for o in fields for n in ((f"{o.name}.start", f"{o.name}.end")
                                                              if o.kind == "pair" else (o.name,))]

            def fill(name: str) -> list:
                values = dataclasses.asdict(preset.owner.from_dict({"preset": name}))
                return [v for o in fields for v in (values[o.name] if o.kind == "pair" else (values[o.name],))]

            controls["preset"].change(fill, inputs=[controls["preset"]], outputs=outputs)
        return controls

    def task_tab(task: Task) -> tuple[dict[str, Any], Any]:
        """The controls of one tab (name -> component) and its Generate button."""
        key = task.name
        controls: dict[str, Any] = {}
        if task.name == "img2img":
            controls["image"] = gr.Image(type="pil", label="Image to edit", elem_id=f"{key}-image")
        elif task.name == "inpaint":
            controls["editor"] = gr.ImageEditor(
                type="pil", label="Image: paint the area to regenerate", elem_id=f"{key}-editor", layers=False,
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24), transforms=())
        elif task.name == "outpaint":
            controls["image"] = gr.Image(type="pil", label="Image to extend", elem_id=f"{key}-image")
        controls["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id=f"{key}-prompt",
                                        placeholder="a red fox in the snow")
        button = gr.Button("Generate", variant="primary", elem_id=f"{key}-generate")
        controls["negative_prompt"] = gr.Textbox(label="Negative prompt", elem_id=f"{key}-negative-prompt")
        if task.strength is not None:
            controls["strength"] = gr.Slider(0.05, 1.0, value=task.strength, step=0.05, label="Strength",
                                             info="how much to regenerate", elem_id=f"{key}-strength")
        size_label = "Input resized to " if task.name == "outpaint" else ""
        with gr.Row():
            for side in ("width", "height"):
                controls[side] = gr.Slider(stride, ui.max_size, value=ui.resolution, step=stride,
                                           label=f"{size_label}{side}".capitalize(), elem_id=f"{key}-{side}")
        if task.name == "outpaint":
            with gr.Row():
                for side in ("left", "right", "top", "bottom"):
                    controls[f"extend_{side}"] = gr.Slider(0, ui.max_extend, value=stride if side in (
                        "left", "right") else 0, step=stride, label=f"Extend {side}", elem_id=f"{key}-extend-{side}")
        with gr.Row():
            controls["steps"] = gr.Slider(1, max(MAX_STEPS, task.steps), value=task.steps, step=1, label="Steps",
                                          elem_id=f"{key}-steps")
            controls["guidance_scale"] = gr.Slider(0.0, MAX_GUIDANCE, value=task.guidance, step=0.5,
                                                   label="Guidance scale", info="above 1 enables guidance",
                                                   elem_id=f"{key}-guidance")
        with gr.Row():
            controls["seed"] = gr.Number(0, minimum=0, maximum=MAX_SEED, precision=0, label="Seed",
                                         elem_id=f"{key}-seed")
            controls["randomize_seed"] = gr.Checkbox(False, label="Random seed", elem_id=f"{key}-randomize")
            controls["num_images"] = gr.Slider(1, ui.max_images, value=1, step=1, label="Images",
                                               elem_id=f"{key}-num-images")
        with gr.Accordion("Advanced sampler options", open=False):
            controls.update(option_controls(task.name))
        return controls, button

    with gr.Blocks(title="Meissonic") as demo:
        gr.Markdown("## Meissonic\nText-to-image and editing with a masked generative transformer. "
                    f"Sizes are multiples of {stride} px.")
        history = gr.State([])  # [(image, caption, settings)]
        with gr.Row():
            with gr.Column(scale=3):
                tabs = []
                with gr.Tabs():
                    for task in ui.tasks.values():
                        with gr.Tab(task.label, id=task.name):
                            controls, button = task_tab(task)
                            tabs.append((task, controls, button))
                            ui.controls[task.name] = controls
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Results", elem_id="results", columns=2, height=480,
                                     object_fit="contain", type="pil")
                shown = gr.JSON(label="Settings of the selected result", elem_id="result-settings")

        def handler(task_name: str, names: dict[Any, str]):
            # Gradio passes a set of inputs as one dict {component: value}; the history state is among them.
            def run(values: dict, progress=gr.Progress()):  # noqa: B008 (Gradio's convention)
                by_name = {names[component]: value for component, value in values.items() if component in names}
                try:
                    images, settings = ui.generate(task_name, by_name, progress)
                except ValueError as error:
                    raise gr.Error(str(error)) from None
                new = [(image, caption(settings, i), {**settings, "seed": settings["seed"] + i})
                       for i, image in enumerate(images)]
                entries = (new + list(values.get(history) or []))[:HISTORY]
                return [(image, text) for image, text, _ in entries], entries, new[0][2]

            return run

        for task, controls, button in tabs:
            names = {component: name for name, component in controls.items()}
            button.click(handler(task.name, names), inputs={*controls.values(), history},
                         outputs=[gallery, history, shown], concurrency_limit=1, concurrency_id="generate")

        def select(entries: list, event) -> dict:
            return entries[event.index][2] if 0 <= event.index < len(entries) else {}

        select.__annotations__["event"] = gr.SelectData  # a real class: Gradio finds event data by annotation

        gallery.select(select, inputs=[history], outputs=[shown])
    demo.queue(default_concurrency_limit=1)
    demo.meissonic = ui
    return demo


def launch(demo, host: str = "127.0.0.1", port: int | None = None, block: bool = True, quiet: bool = False):
    """Serve the app (no share link, no server-side rendering, system fonts). Returns (app, local URL)."""
    import gradio as gr

    app, url, _ = demo.launch(
        server_name=host, server_port=port, share=False, ssr_mode=False, inbrowser=False, show_error=True,
        prevent_thread_lock=not block, quiet=quiet, mcp_server=False, pwa=False,
        theme=gr.themes.Default(**FONTS),
    )
    return app, url
