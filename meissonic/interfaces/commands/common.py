"""Arguments and helpers shared by the generating subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
          "fp16": "float16", "float16": "float16"}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="FOLDER", help="checkpoint folder in the released layout "
                       "(default: the embedded model shipped with the package)")
    group.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                       help="weights precision (auto: bf16 on CPU and CUDA; fp16 only on CUDA)")
    group.add_argument("--variant", help="weight file variant, e.g. fp16")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda when available)")
    group.add_argument("--cpu-offload", action="store_true", help="move each model to the GPU only while it runs")
    add_prompt_rewrites_argument(group)


def add_prompt_rewrites_argument(group: argparse._ActionsContainer) -> None:
    group.add_argument("--no-prompt-rewrites", action="store_true", help="encode prompts as typed, without the "
                       "checkpoint's prompt_rewrites (the embedded model reads \"A right of B\" as \"B left of A\")")


def setting_overrides(args: argparse.Namespace) -> dict:
    """Pipeline settings that command-line flags replace (`from_pretrained` keyword arguments)."""
    return {"prompt_rewrites": []} if getattr(args, "no_prompt_rewrites", False) else {}


def add_temperature_argument(group: argparse._ActionsContainer) -> None:
    """`--temperature START END`: the Gumbel temperature of the kept-token choice (the pipelines' default 2 -> 0)."""
    group.add_argument("--temperature", type=float, nargs=2, default=(2.0, 0.0), metavar=("START", "END"),
                       help="Gumbel temperature annealed from START to END (default 2 0)")


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int | None, guidance: float | None) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--negative-prompt", default=None, help='negative prompt (default "")')
    group.add_argument("--height", type=int, help="image height in pixels (default: the model's resolution)")
    group.add_argument("--width", type=int, help="image width in pixels (default: the model's resolution)")
    group.add_argument("--steps", type=int, default=steps, help=f"decoding steps (default {steps or 'the model'})")
    group.add_argument("--guidance-scale", type=float, default=guidance,
                       help=f"classifier-free guidance scale (default {guidance})")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0); image i uses seed + i")
    group.add_argument("--num-images", type=int, default=1, help="images per prompt")
    add_temperature_argument(group)
    group.add_argument("--masking-schedule", choices=["cosine", "linear"], help="mask schedule override")
    group.add_argument("--aesthetic-score", type=float, default=6.0, help="aesthetic micro-condition (default 6)")
    group.add_argument("--crop-coord", type=int, nargs=2, default=(0, 0), metavar=("TOP", "LEFT"),
                       help="crop micro-condition (default 0 0)")
    group.add_argument("--original-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                       help="original-size micro-condition (default: the output size)")


def add_enhance_arguments(parser: argparse.ArgumentParser) -> None:
    """Enhanced-inference flags (SPEC section 7), freely combined, and transformer quantization."""
    group = parser.add_argument_group("enhanced inference (all combinable; default: the model's default_sampler "
                                      "for text-to-image, vanilla for released models and for edits)")
    group.add_argument("--sampler", metavar="SPEC", help='a setting to start from: "vanilla", "published" '
                       '(noise reg. + differential + Z-sampling), "key=value,..." or a JSON file')
    group.add_argument("--published", action="store_true", help='the published combination (= --sampler published)')
    group.add_argument("--noise-reg", type=float, nargs="?", const=2.0, metavar="STRENGTH",
                       help="noise regularization of the logits (flag alone: the published strength 2)")
    group.add_argument("--differential", type=float, nargs="?", const=0.75, metavar="FRACTION",
                       help="differential sampling on the lowest-KL FRACTION of tokens (flag alone: 0.75)")
    group.add_argument("--zigzag", type=float, nargs="?", const=0.0, metavar="INVERSION_GUIDANCE",
                       help="masked Z-sampling with this inversion guidance (flag alone: 0); ~3x model calls")
    group.add_argument("--guidance-schedule", choices=["constant", "linear", "cosine"],
                       help="guidance scale over the steps: constant, or a linear/cosine ramp from 1")
    group.add_argument("--guidance-interval", type=float, nargs=2, metavar=("START", "END"),
                       help="apply guidance only in this fraction of the steps, e.g. 0.1 0.8")
    group.add_argument("--guidance-outside", type=float, metavar="FRACTION",
                       help="share of the guidance kept outside --guidance-interval: scale 1 + (s - 1) x FRACTION "
                            "there (default 0: conditional only)")
    group.add_argument("--halton", action="store_true", help="unmask in the Halton order instead of by confidence")
    group.add_argument("--tome", type=float, nargs="?", const=0.25, metavar="RATIO",
                       help="TomeMGT token merging in the dual-stream blocks (flag alone: ratio 0.25)")
    group.add_argument("--tome-reuse", type=int, metavar="BLOCKS", help="blocks sharing one merge plan (default 5)")
    group.add_argument("--token-temperature", type=float, metavar="T",
                       help="divide the guided logits by T before drawing tokens (default 1, the reference "
                            "sampler; below 1: fewer unlikely tokens)")
    group.add_argument("--late-token-temperature", type=float, metavar="T",
                       help="also divide the logits by T in the late steps, which decode the second half of the "
                            "mask schedule (default 1; below 1: sharper outlines)")
    group.add_argument("--early-steps", type=float, metavar="FRACTION",
                       help="fraction of the steps that decodes the first half of the mask schedule (default 0.5, "
                            "the plain schedule; above: finer early steps, where the layout is decided)")
    quant = parser.add_argument_group("quantization and compilation")
    quant.add_argument("--quantize", choices=["int8", "fp8", "w4a8"],
                       help="quantize the transformer: int8/fp8 weight-only, or W4A8 (SCQ, calibrated)")
    quant.add_argument("--calibration-prompts", metavar="FILE",
                       help="w4a8: prompts to calibrate on, one per line (default: world training prompts)")
    quant.add_argument("--calibration-count", type=int, default=256,
                       help="w4a8: how many world training prompts to calibrate on without a file (default 256)")
    quant.add_argument("--calibration-steps", type=int, default=8, help="w4a8: steps per calibration image")
    quant.add_argument("--compile", action="store_true",
                       help="sample through torch.compile: ~1.5x faster images once each batch shape has compiled "
                            "(seconds to a minute, cached on disk); pays in servers, evaluations and grids")


# Enhanced-inference flags that set one SamplerOptions field each (flag attribute -> field).
_SAMPLER_FLAGS = {
    "noise_reg": "noise_reg",
    "guidance_schedule": "guidance_schedule",
    "guidance_outside": "guidance_outside",
    "tome": "tome_ratio",
    "tome_reuse": "tome_reuse",
    "token_temperature": "token_temperature",
    "late_token_temperature": "late_token_temperature",
    "early_steps": "early_steps",
}


def sampler_options(args: argparse.Namespace, default=None):
    """SamplerOptions from the enhanced-inference flags: --sampler/--published (else `default`, e.g. the
    checkpoint's text-to-image sampler, else vanilla) with the single flags on top."""
    from ...sampling.options import SamplerOptions

    spec = _sampler_spec(args)
    options = SamplerOptions.parse(spec) if spec else (default or SamplerOptions())
    changes = _single_flag_fields(args)
    return dataclasses.replace(options, **changes) if changes else options


def sampler_settings(args: argparse.Namespace) -> dict:
    """The SamplerOptions fields the enhanced-inference flags set (field -> value): every field of a
    --sampler/--published spec, else only those of the single flags given (none: the model's sampler stands)."""
    spec = _sampler_spec(args)
    chosen = sampler_options(args)
    names = [f.name for f in dataclasses.fields(chosen)] if spec else list(_single_flag_fields(args))
    return {name: getattr(chosen, name) for name in names}


def _sampler_spec(args: argparse.Namespace) -> str | None:
    return "published" if getattr(args, "published", False) else getattr(args, "sampler", None)


def _single_flag_fields(args: argparse.Namespace) -> dict:
    given = {flag: getattr(args, flag, None) for flag in _SAMPLER_FLAGS}
    changes = {_SAMPLER_FLAGS[flag]: value for flag, value in given.items() if value is not None}
    if getattr(args, "differential", None) is not None:
        changes.update(differential=True, differential_fraction=args.differential)
    if getattr(args, "zigzag", None) is not None:
        changes.update(zigzag=True, zigzag_guidance=args.zigzag)
    if getattr(args, "guidance_interval", None):
        changes["guidance_interval"] = tuple(args.guidance_interval)
    if getattr(args, "halton", False):
        changes["order"] = "halton"
    return changes


def read_prompt_file(path: str) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return prompts


def apply_model_options(pipe, args: argparse.Namespace) -> dict | None:
    """Quantize the pipeline's transformer as --quantize says (w4a8 calibrates first; returns the report) and
    compile it with --compile."""
    if getattr(args, "compile", False):
        pipe.compile()
    mode = getattr(args, "quantize", None)
    if not mode:
        return None
    prompts = None
    if mode == "w4a8":
        if args.calibration_prompts:
            prompts = read_prompt_file(args.calibration_prompts)
        else:
            from ...world import training_tasks

            prompts = [task.text for task in training_tasks(args.calibration_count, seed=12345)]
    return pipe.quantize(mode, calibration_prompts=prompts, calibration_steps=args.calibration_steps)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default=None, help="output PNG path; several images are written "
                        "as NAME-0.png, NAME-1.png ... (default: out.png, or out-N.png with the first free N)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """Pipeline keyword arguments from the parsed sampling flags (None means the pipeline's default)."""
    kwargs = dict(
        negative_prompt=args.negative_prompt, height=args.height, width=args.width,
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        temperature=tuple(args.temperature), masking_schedule=args.masking_schedule,
        micro_conditioning_aesthetic_score=args.aesthetic_score,
        micro_conditioning_crop_coord=tuple(args.crop_coord),
        original_size=tuple(args.original_size) if args.original_size else None,
    )
    return {k: v for k, v in kwargs.items() if v is not None}


def generators(seed: int, count: int, device: str = "cpu") -> list:
    """One generator per image (seed, seed + 1, ...): an image does not depend on its batch neighbours."""
    import torch

    return [torch.Generator(device).manual_seed(seed + i) for i in range(count)]


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name} requested but CUDA is not available")
    return name


def load_pipeline(args: argparse.Namespace, pipeline_class):
    """Load the pipeline named by --model (or the embedded model) with --dtype/--variant/--device/--cpu-offload."""
    import torch

    folder = args.model or default_model_folder()
    device = resolve_device(args.device)
    dtype_name = "bfloat16" if args.dtype == "auto" else DTYPES[args.dtype]
    if dtype_name == "float16" and not device.startswith("cuda"):
        raise ValueError("fp16 on a CPU is thousands of times slower than bf16; use --dtype bf16")
    pipe = pipeline_class.from_pretrained(folder, torch_dtype=getattr(torch, dtype_name), variant=args.variant,
                                          **setting_overrides(args))
    if args.cpu_offload:
        if not device.startswith("cuda"):
            raise ValueError("--cpu-offload needs a CUDA device")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


EMBEDDED_MODEL = Path(__file__).resolve().parents[2] / "assets" / "default_model"


def default_model_folder() -> Path:
    """The embedded default model, shipped inside the package (`EMBEDDED_MODEL`)."""
    if not (EMBEDDED_MODEL / "model_index.json").is_file():
        raise FileNotFoundError("no --model given and this installation has no embedded default model "
                                f"({EMBEDDED_MODEL}); pass --model FOLDER")
    return EMBEDDED_MODEL


def output_paths(output: str | None, count: int, overwrite: bool) -> list[Path]:
    """Where to write `count` images; refuses to replace existing files unless `overwrite`.

    Without an explicit output, picks out.png (or out-N.png, out-N-0.png ... with the first free N)."""
    if output is None:
        for n in range(100_000):
            candidate = "out.png" if n == 0 else f"out-{n}.png"
            paths = output_paths(candidate, count, overwrite=True)
            if not any(p.exists() for p in paths):
                return paths
        raise ValueError("no free out-N.png name in this folder; pass -o")
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output {output} must end in .png")
    paths = [path] if count == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    return paths


def save_png(image, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then a rename (no half-written images)."""
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        image.save(temporary, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
