"""The HTTP API: OpenAI-images-compatible generation and edits, health, and an OpenAPI schema (FastAPI).

Errors are JSON objects `{"error": {"message", "type", "code"}}`: 400 invalid request, 401 missing or wrong API
key, 404/405 unknown route or method, 413 body too large, 415 wrong content type, 429 queue full (answered at
once), 503 time limit exceeded, 500 unexpected failure.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import logging
import re
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import PIL.Image
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...pipelines.base import MAX_SIDE
from .options import check_settings, model_sampler_defaults, sampler_options, with_defaults
from .service import GenerationService, QueueFull, TimedOut

logger = logging.getLogger("meissonic.server")
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 50.0


@dataclass
class ServerSettings:
    """Request limits and access control. `max_size` None means twice the model's default resolution."""

    api_key: str | None = None
    max_images: int = 4
    max_size: int | None = None
    max_steps: int = 100
    max_prompt_length: int = 1000
    max_body_bytes: int = 32 * 1024 * 1024
    model_name: str = "meissonic"
    sampler_defaults: dict[str, Any] = field(default_factory=dict)  # under each request's `meissonic` settings


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


def error_response(status: int, message: str, code: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status, headers=headers)


# ----- request bodies ---------------------------------------------------------------------------------------------
class GenerationRequest(BaseModel):
    """POST /v1/images/generations. OpenAI fields plus Meissonic extensions (seed, steps, guidance_scale,
    negative_prompt, and `meissonic`: extra sampler settings, checked against the pipeline's options)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what to generate")
    n: int = Field(1, ge=1, description="number of images (at most the server's cap)")
    size: str | None = Field(None, pattern=r"^(auto|\d{1,6}x\d{1,6})$",
                             description='"WIDTHxHEIGHT", multiples of the model\'s pixel stride; default: the '
                                         "model's resolution")
    response_format: str = Field("b64_json", description='only "b64_json" is supported')
    model: str | None = Field(None, description="ignored: the server runs one model")
    quality: str | None = Field(None, description="accepted for compatibility, ignored")
    style: str | None = Field(None, description="accepted for compatibility, ignored")
    user: str | None = Field(None, description="accepted for compatibility, ignored")
    negative_prompt: str | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="image i uses seed + i; default: random")
    steps: int | None = Field(None, ge=1, description="decoding steps (default: the pipeline's)")
    guidance_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE, description="> 1 enables guidance")
    meissonic: dict[str, Any] | None = Field(None, description="extra sampler settings, see GET /v1/options")


class EditFields(GenerationRequest):
    """POST /v1/images/edits: multipart/form-data with files `image` and optional `mask`, or JSON with base64
    `image`/`mask`. A mask's transparent pixels (or, for an opaque mask, its white pixels) are regenerated; without
    a mask, an image with transparency is inpainted there, an opaque one is edited as a whole (img2img)."""

    image: str | None = Field(None, description="JSON only: base64 PNG/JPEG (a data: URL is accepted)")
    mask: str | None = Field(None, description="JSON only: base64 mask")
    strength: float | None = Field(None, gt=0, le=1, description="how much to regenerate (default 0.5 img2img, "
                                                                  "1.0 inpainting)")


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None
    seed: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


def _schema(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _edit_schema() -> dict:
    form = EditFields.model_json_schema()
    form["properties"] = {**{k: v for k, v in form["properties"].items() if k not in ("image", "mask")},
                          "image": {"type": "string", "format": "binary"},
                          "mask": {"type": "string", "format": "binary"}}
    form["required"] = ["prompt", "image"]
    json_schema = EditFields.model_json_schema()
    json_schema["required"] = ["prompt", "image"]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form},
                                                          "application/json": {"schema": json_schema}}}}


# ----- parsing helpers --------------------------------------------------------------------------------------------
def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes before reading them where possible."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body exceeds {limit} bytes", "payload_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds {limit} bytes", "payload_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"malformed JSON body: {error}", "invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the JSON body must be an object", "invalid_json")
    return value


def validate(model: type[BaseModel], fields: dict) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}", "invalid_value") from None


def decode_base64(text: str, what: str) -> bytes:
    match = re.match(r"^data:[\w/+.-]*;base64,", text)
    try:
        return base64.b64decode(text[match.end():] if match else text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what} is not valid base64", "invalid_base64") from None


def read_image(data: bytes, what: str) -> PIL.Image.Image:
    """Decode an uploaded image, refusing (400) non-images and sides above the pipelines' maximum."""
    if not data:
        raise ApiError(400, f"{what} is empty", "invalid_image")
    try:
        image = PIL.Image.open(io.BytesIO(data))
        if max(image.size) > MAX_SIDE:
            raise ApiError(400, f"{what} is {image.width}x{image.height}; sides are limited to {MAX_SIDE}",
                           "invalid_image")
        image.load()
    except (PIL.UnidentifiedImageError, OSError, PIL.Image.DecompressionBombError, SyntaxError):
        raise ApiError(400, f"{what} is not a PNG, JPEG or other image that Pillow can read", "invalid_image") \
            from None
    return image


def has_transparency(image: PIL.Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def regenerate_mask(mask: PIL.Image.Image) -> PIL.Image.Image:
    """An uploaded mask -> the pipelines' mask (mode L, white = regenerate).

    OpenAI semantics: transparent pixels (alpha < 128) are regenerated. A fully opaque mask is read as black and
    white instead: white (>= 128) = regenerate."""
    if has_transparency(mask):
        return mask.convert("RGBA").getchannel("A").point(lambda a: 255 if a < 128 else 0)
    return mask.convert("L")


def png_base64(images: list) -> list[str]:
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


# ----- the application --------------------------------------------------------------------------------------------
def create_app(pipeline, settings: ServerSettings | None = None, service: GenerationService | None = None) -> FastAPI:
    """The API on a loaded text-to-image pipeline (editing pipelines share its weights)."""
    settings = settings or ServerSettings()
    service = service or GenerationService(pipeline)
    stride, resolution = pipeline.stride, pipeline.config.default_resolution
    max_size = settings.max_size or min(2 * resolution, MAX_SIDE)
    max_size -= max_size % stride
    if max_size < stride:
        raise ValueError(f"max_size must be at least the stride {stride}")
    from ...pipelines import MeissonicImg2ImgPipeline, MeissonicInpaintPipeline, MeissonicPipeline

    # a task's settings: the checkpoint's text-to-image sampler, the server's flags, then the request's `meissonic`
    # object (a "preset" in the request starts from that preset instead of the checkpoint's sampler)
    classes = {"text2image": MeissonicPipeline, "img2img": MeissonicImg2ImgPipeline,
               "inpaint": MeissonicInpaintPipeline}
    model_defaults = {task: model_sampler_defaults(pipeline, task) for task in classes}
    options = {task: with_defaults(sampler_options(cls), {**model_defaults[task], **settings.sampler_defaults})
               for task, cls in classes.items()}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await asyncio.to_thread(service.shutdown)

    app = FastAPI(title="Meissonic image API", version="1", lifespan=lifespan,
                  description="OpenAI-images-compatible text-to-image and editing with a Meissonic model. "
                              "Only `b64_json` responses; extensions: seed, steps, guidance_scale, negative_prompt, "
                              "strength (edits) and `meissonic` (extra sampler settings, see GET /v1/options).")
    app.state.service, app.state.settings = service, settings

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.code, error.kind)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), None, "invalid_request_error", error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, str(error.errors()[0].get("msg", "invalid request")), "invalid_value")

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, error: Exception) -> JSONResponse:
        logger.error("unexpected error", exc_info=error)
        return error_response(500, "internal server error", "internal_error", "server_error")

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if settings.api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
            if not given or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                return error_response(401, "missing or invalid API key: send 'Authorization: Bearer KEY'",
                                      "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    def check_common(request: GenerationRequest, task: str) -> dict[str, Any]:
        """Limits that depend on the server's settings; returns the pipeline keyword arguments shared by tasks."""
        if request.response_format != "b64_json":
            raise ApiError(400, f"response_format {request.response_format!r} is not supported: this server returns "
                                "images inline only; use 'b64_json'", "unsupported_response_format")
        if not request.prompt.strip():
            raise ApiError(400, "prompt must not be empty", "invalid_prompt")
        for name, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt or "")):
            if len(text) > settings.max_prompt_length:
                raise ApiError(400, f"{name} is {len(text)} characters long; the limit is "
                                    f"{settings.max_prompt_length}", "prompt_too_long")
        if request.n > settings.max_images:
            raise ApiError(400, f"n = {request.n} exceeds this server's limit of {settings.max_images}", "invalid_n")
        if request.steps is not None and request.steps > settings.max_steps:
            raise ApiError(400, f"steps = {request.steps} exceeds this server's limit of {settings.max_steps}",
                           "invalid_steps")
        try:
            requested = request.meissonic or {}
            base = {} if "preset" in requested else model_defaults[task]
            extras = check_settings(options[task], {**base, **settings.sampler_defaults, **requested})
        except ValueError as error:
            raise ApiError(400, f"meissonic: {error}", "invalid_option") from None
        kwargs = dict(prompt=request.prompt, num_images_per_prompt=request.n, **extras)
        for name, value in (("negative_prompt", request.negative_prompt), ("num_inference_steps", request.steps),
                            ("guidance_scale", request.guidance_scale)):
            if value is not None:
                kwargs[name] = value
        return kwargs

    def parse_size(size: str | None, fallback: tuple[int, int] | None = None) -> tuple[int, int]:
        """(width, height) of "WxH" (or the fallback / default resolution), checked against limits and stride."""
        if size in (None, "auto"):
            width, height = fallback or (resolution, resolution)
            source = f"the image's size {width}x{height}" if fallback else None
        else:
            width, height = (int(side) for side in size.split("x"))
            source = f"size {size}"
        for side in (width, height):
            if not stride <= side <= max_size:
                raise ApiError(400, f"{source}: sides must be in [{stride}, {max_size}]", "invalid_size")
            if side % stride:
                raise ApiError(400, f"{source}: sides must be multiples of {stride} (the model's pixel stride)"
                               + ("; pass a size" if fallback else ""), "invalid_size")
        return width, height

    async def run(task: str, kwargs: dict[str, Any], seed: int | None, count: int) -> JSONResponse:
        from ..commands.common import generators

        seed = secrets.randbelow(2**31) if seed is None else seed
        kwargs["generator"] = generators(seed, count)
        try:
            encoded = await service.submit(task, kwargs, postprocess=png_base64)
        except QueueFull:
            raise ApiError(429, "the server is busy: every worker is generating and the queue is full; retry later",
                           "queue_full", "rate_limit_error") from None
        except TimedOut:
            raise ApiError(503, f"the request did not finish within the time limit ({service.timeout:g} s)",
                           "timeout", "server_error") from None
        except ValueError as error:  # the pipelines' argument checks
            raise ApiError(400, str(error), "invalid_value") from None
        except Exception:
            logger.exception("generation failed")
            raise ApiError(500, "generation failed; see the server log", "internal_error", "server_error") from None
        data = [{"b64_json": b64, "seed": seed + i} for i, b64 in enumerate(encoded)]
        revised = pipeline.rewrite_prompt(kwargs["prompt"])  # the checkpoint's prompt_rewrites, as OpenAI's field
        if revised != kwargs["prompt"]:
            for item in data:
                item["revised_prompt"] = revised
        return JSONResponse({"created": int(time.time()), "data": data})

    @app.get("/health", summary="liveness, model and queue state (no API key needed)")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, "stride": stride, "default_size": resolution,
                "max_size": max_size, "max_images": settings.max_images, "queue": service.status()}

    @app.get("/v1/models", summary="the served model (OpenAI-compatible listing)")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "meissonic"}]}

    @app.get("/v1/options", summary="extra sampler settings accepted in the `meissonic` object, per task")
    async def list_options() -> dict:
        return {task: [{"name": o.name, "kind": o.kind, "default": o.default, "minimum": o.minimum,
                        "maximum": o.maximum, "choices": list(o.choices), "label": o.label} for o in task_options]
                for task, task_options in options.items()}

    @app.post("/v1/images/generations", summary="create images from a prompt", openapi_extra=_schema(
        GenerationRequest), responses={200: {"model": ImagesResponse}})
    async def generations(request: Request) -> JSONResponse:
        if _media_type(request) != "application/json":
            raise ApiError(415, "send the request as application/json", "unsupported_media_type")
        body = validate(GenerationRequest, parse_json(await read_body(request, settings.max_body_bytes)))
        kwargs = check_common(body, "text2image")
        kwargs["width"], kwargs["height"] = parse_size(body.size)
        return await run("text2image", kwargs, body.seed, body.n)

    @app.post("/v1/images/edits", summary="edit or inpaint an image", openapi_extra=_edit_schema(),
              responses={200: {"model": ImagesResponse}})
    async def edits(request: Request) -> JSONResponse:
        media = _media_type(request)
        body = await read_body(request, settings.max_body_bytes)
        if media == "multipart/form-data":
            fields, image_bytes, mask_bytes = await parse_multipart(request, body)
        elif media == "application/json":
            fields = parse_json(body)
            image_bytes = mask_bytes = None
        else:
            raise ApiError(415, "send multipart/form-data (files image, mask) or application/json (base64)",
                           "unsupported_media_type")
        edit = validate(EditFields, fields)
        if media == "application/json":
            if not edit.image:
                raise ApiError(400, "image: Field required", "invalid_value")
            image_bytes = decode_base64(edit.image, "image")
            mask_bytes = decode_base64(edit.mask, "mask") if edit.mask else None
        elif image_bytes is None:
            raise ApiError(400, "image: a file field named 'image' is required", "invalid_value")
        task, kwargs = await asyncio.to_thread(edit_inputs, image_bytes, mask_bytes)
        kwargs.update(check_common(edit, task))
        kwargs["width"], kwargs["height"] = parse_size(edit.size, kwargs.pop("image_size"))
        if edit.strength is not None:
            kwargs["strength"] = edit.strength
        return await run(task, kwargs, edit.seed, edit.n)

    async def parse_multipart(request: Request, body: bytes) -> tuple[dict, bytes | None, bytes | None]:
        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=2, max_fields=32)
        except Exception as error:  # malformed multipart
            raise ApiError(400, f"malformed multipart body: {error}", "invalid_multipart") from None
        fields: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
            else:
                files[key] = await value.read()
        for key in ("image", "mask"):
            if key in fields:
                raise ApiError(400, f"{key} must be sent as a file", "invalid_value")
        unknown_files = set(files) - {"image", "mask"}
        if unknown_files:
            raise ApiError(400, f"unexpected file field(s) {sorted(unknown_files)}", "invalid_value")
        if "meissonic" in fields:
            try:
                fields["meissonic"] = json.loads(fields["meissonic"])
            except json.JSONDecodeError:
                raise ApiError(400, "meissonic: must be a JSON object", "invalid_json") from None
        return fields, files.get("image"), files.get("mask")

    def edit_inputs(image_bytes: bytes, mask_bytes: bytes | None) -> tuple[str, dict[str, Any]]:
        """Decode the uploads: the task (img2img or inpaint) and its image/mask keyword arguments."""
        image = read_image(image_bytes, "image")
        mask = regenerate_mask(read_image(mask_bytes, "mask")) if mask_bytes is not None else None
        if mask is None and has_transparency(image):
            mask = regenerate_mask(image)
        if mask is not None and mask.size != image.size:
            raise ApiError(400, f"mask is {mask.width}x{mask.height} but image is {image.width}x{image.height}; "
                                "they must have the same size", "invalid_mask")
        kwargs: dict[str, Any] = {"image": image.convert("RGB"), "image_size": image.size}
        if mask is None:
            return "img2img", kwargs
        if mask.getextrema()[1] < 128:
            raise ApiError(400, "the mask marks nothing to regenerate (use transparent or white pixels)",
                           "invalid_mask")
        kwargs["mask_image"] = mask
        return "inpaint", kwargs

    return app
