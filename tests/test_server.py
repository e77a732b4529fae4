"""The HTTP API, tested as clients use it: a real uvicorn server on 127.0.0.1 and httpx requests."""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

import PIL.Image  # noqa: E402

from meissonic.interfaces.server import GenerationService, ServerSettings, create_app  # noqa: E402
from meissonic.interfaces.server.app import regenerate_mask  # noqa: E402
from meissonic.interfaces.server.options import check_settings, sampler_options  # noqa: E402
from meissonic.testing import build_tiny_pipeline_folder  # noqa: E402

STEPS = 2  # every request runs few steps: the tiny model takes ~30 ms per step


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(folder):
    from meissonic.pipelines import MeissonicPipeline

    return MeissonicPipeline.from_pretrained(folder)


@contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` with uvicorn in a thread on a free loopback port; yield its URL; always stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


@pytest.fixture(scope="module")
def url(pipe) -> Iterator[str]:
    service = GenerationService(pipe, concurrency=1, queue_size=16, timeout=60)
    with serving(create_app(pipe, ServerSettings(max_images=4, max_steps=50), service)) as base:
        yield base


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode(item: dict) -> PIL.Image.Image:
    image = PIL.Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert image.format == "PNG"
    return image.convert("RGB")


def generate(base: str, timeout: float = 30, **fields) -> httpx.Response:
    fields = {"prompt": "a red circle", "steps": STEPS, **fields}
    return httpx.post(f"{base}/v1/images/generations", json=fields, timeout=timeout)


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and set(error) == {"message", "type", "code"}


# ----- valid requests -----------------------------------------------------------------------------------------------
def test_generations_return_pngs_of_the_requested_size(url):
    response = generate(url, n=2, size="48x32", seed=3, guidance_scale=2.0, negative_prompt="blue")
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int) and abs(body["created"] - time.time()) < 60
    assert [item["seed"] for item in body["data"]] == [3, 4]
    assert [decode(item).size for item in body["data"]] == [(48, 32), (48, 32)]
    default = generate(url).json()["data"][0]
    assert decode(default).size == (32, 32)  # the model's default resolution


def test_revised_prompt_reports_the_checkpoint_rewrites(folder, url):
    """OpenAI's `revised_prompt` carries the prompt the model read when the checkpoint's prompt_rewrites changed it."""
    from meissonic.pipelines import MeissonicPipeline

    rewriting = MeissonicPipeline.from_pretrained(folder, prompt_rewrites=[[r"^a (\w+) below a (\w+)$",
                                                                            r"a \2 above a \1"]])
    with serving(create_app(rewriting, ServerSettings(max_steps=50))) as base:
        data = generate(base, prompt="a cat below a dog", n=2).json()["data"]
        assert [item["revised_prompt"] for item in data] == ["a dog above a cat"] * 2
        assert "revised_prompt" not in generate(base, prompt="a cat above a dog").json()["data"][0]
    assert "revised_prompt" not in generate(url, prompt="a cat below a dog").json()["data"][0]


def test_images_depend_only_on_their_seed(url):
    pair = generate(url, n=2, seed=10).json()["data"]
    single = generate(url, n=1, seed=11).json()["data"]
    assert pair[1]["b64_json"] == single[0]["b64_json"]  # one generator per image
    assert pair[0]["b64_json"] != pair[1]["b64_json"]


def test_extra_sampler_settings(url):
    response = generate(url, meissonic={"temperature": [1.0, 0.0], "masking_schedule": "linear"})
    assert response.status_code == 200, response.text
    options = httpx.get(f"{url}/v1/options").json()
    assert {o["name"] for o in options["text2image"]} >= {"temperature", "masking_schedule"}


def test_edits_multipart_and_json(url):
    image = PIL.Image.new("RGB", (32, 32), (200, 30, 30))
    white_square = PIL.Image.new("L", (32, 32), 0)
    white_square.paste(255, (8, 8, 24, 24))
    transparent_hole = PIL.Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    transparent_hole.paste((0, 0, 0, 0), (8, 8, 24, 24))
    cases = [
        ({"image": ("in.png", png_bytes(image), "image/png")}, {}),  # img2img
        ({"image": ("in.png", png_bytes(image), "image/png"),
          "mask": ("mask.png", png_bytes(white_square), "image/png")}, {"size": "48x48"}),
        ({"image": ("in.png", png_bytes(image), "image/png"),
          "mask": ("mask.png", png_bytes(transparent_hole), "image/png")}, {"n": "2", "strength": "0.8"}),
    ]
    for files, extra in cases:
        data = {"prompt": "a blue boat", "steps": str(STEPS), "seed": "1", **extra}
        response = httpx.post(f"{url}/v1/images/edits", files=files, data=data, timeout=30)
        assert response.status_code == 200, response.text
        side = 48 if extra.get("size") else 32
        items = response.json()["data"]
        assert len(items) == int(extra.get("n", 1)) and all(decode(i).size == (side, side) for i in items)
    payload = {"prompt": "a boat", "steps": STEPS, "image": base64.b64encode(png_bytes(image)).decode(),
               "mask": "data:image/png;base64," + base64.b64encode(png_bytes(white_square)).decode()}
    response = httpx.post(f"{url}/v1/images/edits", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    assert decode(response.json()["data"][0]).size == (32, 32)


def test_mask_semantics():
    transparent = PIL.Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    transparent.putpixel((0, 0), (255, 255, 255, 0))
    mask = regenerate_mask(transparent)  # OpenAI: transparent = regenerate
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((1, 1)) == 0
    black_white = PIL.Image.new("RGB", (4, 4), (0, 0, 0))
    black_white.putpixel((2, 2), (255, 255, 255))
    mask = regenerate_mask(black_white)  # opaque masks: white = regenerate
    assert mask.getpixel((2, 2)) == 255 and mask.getpixel((0, 0)) == 0
    opaque_rgba = regenerate_mask(black_white.convert("RGBA"))
    assert opaque_rgba.getpixel((2, 2)) == 255 and opaque_rgba.getpixel((0, 0)) == 0


def test_openapi_schema_and_health(url):
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/images/generations", "/v1/images/edits", "/health"} <= set(schema["paths"])
    body = schema["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]
    assert {"prompt", "n", "size", "response_format", "seed"} <= set(body["schema"]["properties"])
    edit = schema["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} == set(edit)
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["stride"] == 8 and health["queue"]["concurrency"] == 1


# ----- bad requests -------------------------------------------------------------------------------------------------
def _edit_files(image: bytes) -> dict:
    return {"image": ("in.png", image, "image/png")}


BAD_REQUESTS = [
    ("missing prompt", "generations", {"json": {"n": 1}}, 400),
    ("empty prompt", "generations", {"json": {"prompt": "  "}}, 400),
    ("prompt too long", "generations", {"json": {"prompt": "a" * 1001}}, 400),
    ("huge size", "generations", {"json": {"prompt": "x", "size": "100000x100000"}}, 400),
    ("size not a multiple of the stride", "generations", {"json": {"prompt": "x", "size": "33x32"}}, 400),
    ("size below the stride", "generations", {"json": {"prompt": "x", "size": "0x32"}}, 400),
    ("size malformed", "generations", {"json": {"prompt": "x", "size": "big"}}, 400),
    ("n = 1000", "generations", {"json": {"prompt": "x", "n": 1000}}, 400),
    ("n = 0", "generations", {"json": {"prompt": "x", "n": 0}}, 400),
    ("n not a number", "generations", {"json": {"prompt": "x", "n": "many"}}, 400),
    ("steps = 0", "generations", {"json": {"prompt": "x", "steps": 0}}, 400),
    ("steps above the cap", "generations", {"json": {"prompt": "x", "steps": 10_000}}, 400),
    ("negative guidance", "generations", {"json": {"prompt": "x", "guidance_scale": -1}}, 400),
    ("response_format url", "generations", {"json": {"prompt": "x", "response_format": "url"}}, 400),
    ("unknown field", "generations", {"json": {"prompt": "x", "colour": "red"}}, 400),
    ("unknown sampler option", "generations", {"json": {"prompt": "x", "meissonic": {"warp": 9}}}, 400),
    ("bad sampler option value", "generations",
     {"json": {"prompt": "x", "meissonic": {"masking_schedule": "zigzag"}}}, 400),
    ("malformed JSON", "generations", {"content": b'{"prompt": ', "headers": {"content-type": "application/json"}},
     400),
    ("JSON array", "generations", {"json": ["prompt"]}, 400),
    ("wrong content type", "generations", {"content": b"prompt=x", "headers": {"content-type": "text/plain"}}, 415),
    ("form to generations", "generations", {"data": {"prompt": "x"}}, 415),
    ("bad base64", "edits", {"json": {"prompt": "x", "image": "not base64 at all!"}}, 400),
    ("base64 of a non-image", "edits", {"json": {"prompt": "x", "image": base64.b64encode(b"hello").decode()}},
     400),
    ("edit without image", "edits", {"json": {"prompt": "x"}}, 400),
    ("multipart without image", "edits", {"data": {"prompt": "x"}, "files": {"other": ("a", b"b")}}, 400),
    ("multipart non-image", "edits", {"data": {"prompt": "x"}, "files": _edit_files(b"GIF89a-broken")}, 400),
    ("edit image not a multiple of the stride", "edits",
     {"data": {"prompt": "x"}, "files": _edit_files(png_bytes(PIL.Image.new("RGB", (30, 30))))}, 400),
    ("mask of another size", "edits",
     {"data": {"prompt": "x"}, "files": {**_edit_files(png_bytes(PIL.Image.new("RGB", (32, 32)))),
                                         "mask": ("m.png", png_bytes(PIL.Image.new("L", (16, 16), 255)))}}, 400),
    ("empty mask", "edits",
     {"data": {"prompt": "x"}, "files": {**_edit_files(png_bytes(PIL.Image.new("RGB", (32, 32)))),
                                         "mask": ("m.png", png_bytes(PIL.Image.new("L", (32, 32), 0)))}}, 400),
    ("edits with plain text", "edits", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    ("unknown route", "models/unknown", {"json": {}}, 404),
]


@pytest.mark.parametrize(("name", "route", "request_kwargs", "status"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_json_error(url, name, route, request_kwargs, status):
    response = httpx.post(f"{url}/v1/images/{route}", timeout=30, **request_kwargs)
    assert_error(response, status)


def test_server_keeps_serving_after_bad_requests(url):
    for _name, route, request_kwargs, _status in BAD_REQUESTS:
        httpx.post(f"{url}/v1/images/{route}", timeout=30, **request_kwargs)
    assert_error(httpx.get(f"{url}/v1/images/generations"), 405)
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert generate(url).status_code == 200


def test_body_size_limit(pipe):
    app = create_app(pipe, ServerSettings(max_body_bytes=1000))
    with serving(app) as base:
        assert_error(httpx.post(f"{base}/v1/images/generations", json={"prompt": "a" * 2000}), 413)
        assert generate(base).status_code == 200


# ----- access control -----------------------------------------------------------------------------------------------
def test_api_key(pipe):
    with serving(create_app(pipe, ServerSettings(api_key="s3cret"))) as base:
        assert_error(generate(base), 401)
        assert_error(httpx.post(f"{base}/v1/images/generations", json={"prompt": "x"},
                                headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(httpx.post(f"{base}/v1/images/generations", content=b"{",
                                headers={"content-type": "application/json"}), 401)  # no detail before auth
        ok = httpx.post(f"{base}/v1/images/generations", json={"prompt": "x", "steps": STEPS},
                        headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert ok.status_code == 200, ok.text
        assert httpx.get(f"{base}/health").status_code == 200  # health needs no key


# ----- queue, time limits, load -------------------------------------------------------------------------------------
@pytest.fixture
def slow_model(pipe, monkeypatch):
    """Each transformer call sleeps first (the sleep releases the GIL like torch's kernels do)."""
    forward = pipe.transformer.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", slow_forward)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_health_answers_while_generating_and_full_queue_is_429(pipe, slow_model):
    service = GenerationService(pipe, concurrency=1, queue_size=1, timeout=30)
    with serving(create_app(pipe, ServerSettings(), service)) as base, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        status = lambda: httpx.get(f"{base}/health").json()["queue"]  # noqa: E731
        first = pool.submit(generate, base, steps=20)  # ~2 s
        wait_for(lambda: status()["running"] == 1)
        started = time.monotonic()
        assert httpx.get(f"{base}/health", timeout=2).status_code == 200
        assert time.monotonic() - started < 1.0
        second = pool.submit(generate, base, steps=1)
        wait_for(lambda: status()["waiting"] == 1)
        started = time.monotonic()
        assert_error(generate(base), 429)  # answered at once
        assert time.monotonic() - started < 1.0
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert generate(base, steps=1).status_code == 200  # capacity is released


def test_time_limit_is_503_and_work_is_cancelled(pipe, slow_model):
    service = GenerationService(pipe, concurrency=1, queue_size=4, timeout=0.5)
    with serving(create_app(pipe, ServerSettings(), service)) as base:
        started = time.monotonic()
        assert_error(generate(base, steps=40), 503)  # 40 steps x 0.1 s would take 4 s
        assert time.monotonic() - started < 2.0
        wait_for(lambda: service.status()["running"] == 0, timeout=2)  # stopped at its next step
        assert service.completed == 0
        assert generate(base, steps=1).status_code == 200


def test_load_50_requests_from_10_clients(pipe):
    service = GenerationService(pipe, concurrency=2, queue_size=6, timeout=20)
    with serving(create_app(pipe, ServerSettings(), service)) as base:
        def client(index: int) -> list[int]:
            statuses = []
            with httpx.Client(base_url=base, timeout=30) as session:
                for request in range(5):
                    fields = {"prompt": f"shape {index} {request}", "steps": 1, "seed": index}
                    if request % 2:
                        fields["n"] = 2
                    statuses.append(session.post("/v1/images/generations", json=fields).status_code)
            return statuses

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            statuses = [s for result in pool.map(client, range(10)) for s in result]
        assert len(statuses) == 50
        assert set(statuses) <= {200, 429, 503}, statuses
        assert statuses.count(200) >= 10
        assert httpx.get(f"{base}/health").json()["queue"]["running"] == 0
        assert generate(base).status_code == 200


# ----- options and the command --------------------------------------------------------------------------------------
class FuturePipeline:
    """A pipeline whose __call__ gained enhanced-inference keywords: they must appear as options."""

    def __call__(self, prompt: str | None = None, num_inference_steps: int = 48, temperature: float = 2.0,
                 noise_regularization: bool = False, differential_strength: float = 0.5,
                 guidance_schedule: Literal["constant", "linear", "cosine"] = "constant", order: str | None = None,
                 hook=None):
        pass


def test_sampler_options_follow_the_signature():
    options = {o.name: o for o in sampler_options(FuturePipeline)}
    assert set(options) == {"temperature", "noise_regularization", "differential_strength", "guidance_schedule",
                            "order"}
    assert options["noise_regularization"].kind == "bool"
    assert options["guidance_schedule"].choices == ("constant", "linear", "cosine")
    settings = check_settings(list(options.values()), {"noise_regularization": True, "temperature": 1})
    assert settings == {"noise_regularization": True, "temperature": (1.0, 1.0)}
    for bad in ({"noise_regularization": "yes"}, {"guidance_schedule": "square"}, {"differential_strength": "x"},
                {"temperature": [1, 2, 3]}, {"temperature": 11}, {"hook": 1}):
        with pytest.raises(ValueError):
            check_settings(list(options.values()), bad)


def test_serve_command_builds_the_app(folder, monkeypatch, is_embedded_model):
    from meissonic.interfaces.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    monkeypatch.setenv("MEISSONIC_API_KEY", "from-env")
    args = parser.parse_args(["--model", str(folder), "--concurrency", "2", "--queue-size", "3", "--max-images", "2"])
    app = serve.build_app(args)
    assert app.state.settings.api_key == "from-env" and app.state.settings.max_images == 2
    assert app.state.service.concurrency == 2 and app.state.service.queue_size == 3
    with serving(app) as base:  # loaded with the command's defaults (bf16 on CPU)
        response = httpx.post(f"{base}/v1/images/generations", json={"prompt": "x", "steps": 1},
                              headers={"Authorization": "Bearer from-env"}, timeout=30)
        assert response.status_code == 200, response.text
    embedded = serve.build_app(parser.parse_args([]))  # no --model: the embedded default model
    assert is_embedded_model(embedded.state.service.pipeline)
    with pytest.raises(ValueError):
        serve.build_app(parser.parse_args(["--model", str(folder), "--concurrency", "0"]))


def test_the_model_sampler_is_the_text2image_default(folder, url):
    """A checkpoint's `default_sampler` applies to text-to-image requests that name no preset, below the request's
    own settings, and shows as the default in /v1/options; edits keep vanilla decoding."""
    from meissonic.pipelines import MeissonicPipeline

    guided_early = MeissonicPipeline.from_pretrained(folder, default_sampler={"guidance_interval": (0.0, 0.5)})
    fields = dict(seed=5, guidance_scale=3.0, steps=6)
    with serving(create_app(guided_early, ServerSettings())) as base:
        stored = generate(base, **fields).json()["data"][0]["b64_json"]
        vanilla = generate(base, meissonic={"preset": "vanilla"}, **fields).json()["data"][0]["b64_json"]
        on_top = generate(base, meissonic={"token_temperature": 0.5}, **fields).json()["data"][0]["b64_json"]
        options = httpx.get(f"{base}/v1/options").json()
    plain = {name: generate(url, meissonic=settings, **fields).json()["data"][0]["b64_json"] for name, settings in
             (("default", {}), ("early", {"guidance_interval": [0.0, 0.5]}),
              ("early+temperature", {"guidance_interval": [0.0, 0.5], "token_temperature": 0.5}))}
    assert stored == plain["early"] != plain["default"]
    assert vanilla == plain["default"] and on_top == plain["early+temperature"]
    interval = {task: {o["name"]: o["default"] for o in options[task]}["guidance_interval"] for task in options}
    assert interval == {"text2image": [0.0, 0.5], "img2img": [0.0, 1.0], "inpaint": [0.0, 1.0]}
