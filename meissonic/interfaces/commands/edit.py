"""`meissonic edit PROMPT --image IN.png --mode img2img|inpaint|outpaint`: edit an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_enhance_arguments,
    add_model_arguments,
    add_output_arguments,
    add_sampling_arguments,
    apply_model_options,
    generators,
    load_pipeline,
    output_paths,
    sampler_options,
    sampling_kwargs,
    save_png,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="what the edited image should show")
    parser.add_argument("--image", required=True, help="input image")
    parser.add_argument("--mode", choices=["img2img", "inpaint", "outpaint"], default=None,
                        help="img2img (default without --mask), inpaint (default with --mask) or outpaint")
    parser.add_argument("--mask", help="inpainting mask: white = regenerate, black = keep (same size as --image)")
    parser.add_argument("--strength", type=float, default=None,
                        help="how much to regenerate, in (0, 1] (default 0.5 img2img, 1.0 inpaint/outpaint)")
    parser.add_argument("--extend", type=int, nargs=4, default=None, metavar=("LEFT", "RIGHT", "TOP", "BOTTOM"),
                        help="outpainting: pixels to add on each side")
    add_model_arguments(parser)
    add_sampling_arguments(parser, steps=None, guidance=None)
    add_enhance_arguments(parser)
    add_output_arguments(parser)


def _read_image(path: str, mode: str):
    import PIL.Image

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with PIL.Image.open(path) as image:
            return image.convert(mode)
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{path} is not an image Pillow can read") from None


def run(args: argparse.Namespace) -> int:
    from ...pipelines import MeissonicImg2ImgPipeline, MeissonicInpaintPipeline

    mode = args.mode or ("inpaint" if args.mask else "img2img")
    if mode == "inpaint" and not args.mask:
        raise ValueError("--mode inpaint needs --mask")
    if mode != "inpaint" and args.mask:
        raise ValueError(f"--mask is only used with --mode inpaint, not {mode}")
    if mode == "outpaint" and not args.extend:
        raise ValueError("--mode outpaint needs --extend LEFT RIGHT TOP BOTTOM")
    if mode != "outpaint" and args.extend:
        raise ValueError("--extend is only used with --mode outpaint")
    image = _read_image(args.image, "RGB")
    mask = _read_image(args.mask, "L") if args.mask else None
    if mask is not None and mask.size != image.size:
        raise ValueError(f"mask size {mask.size} differs from image size {image.size} (width, height)")
    count = args.num_images
    paths = output_paths(args.output, count, args.overwrite)

    kwargs = sampling_kwargs(args)
    if args.strength is not None:
        kwargs["strength"] = args.strength
    common = dict(num_images_per_prompt=count, generator=generators(args.seed, count),
                  sampler=sampler_options(args), **kwargs)
    pipe = load_pipeline(args, MeissonicImg2ImgPipeline if mode == "img2img" else MeissonicInpaintPipeline)
    apply_model_options(pipe, args)
    if mode == "img2img":
        images = pipe(args.prompt, image=image, **common).images
    elif mode == "inpaint":
        images = pipe(args.prompt, image=image, mask_image=mask, **common).images
    else:
        left, right, top, bottom = args.extend
        images = pipe.outpaint(args.prompt, image=image, left=left, right=right, top=top, bottom=bottom,
                               **common).images
    for result, path in zip(images, paths, strict=True):
        save_png(result, path)
        print(path)
    return 0
