"""`MeissonicPipeline.compile`: sampling through torch.compile computes what eager sampling does."""

import argparse
import logging

import numpy as np
import pytest
import torch

from meissonic import MeissonicPipeline
from meissonic.sampling.options import SamplerOptions
from meissonic.testing import build_tiny_pipeline_folder

# torch's own compiler stack warns about its deprecated torch.jit internals while tracing.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("tiny") / "pipe")


def load(folder) -> MeissonicPipeline:
    pipe = MeissonicPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def step_logits(pipe, prompt="a red circle", steps=3) -> tuple[list[torch.Tensor], np.ndarray]:
    """The guided logits of every step and the final image of one seeded call."""
    logits = []

    def keep(_pipe, _step, _remaining, state):
        logits.append(state["logits"].clone())

    out = pipe(prompt, height=32, width=32, num_inference_steps=steps, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0), callback_on_step_end=keep, output_type="np")
    return logits, out.images


def test_compiled_sampling_matches_eager_and_follows_weight_changes(tiny_folder):
    eager, compiled = load(tiny_folder), load(tiny_folder).compile()
    assert compiled.sampling_transformer(SamplerOptions()) is not compiled.transformer
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    reference, _ = step_logits(eager)
    result, _ = step_logits(compiled)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames  # really went through the compiler
    # The first step sees the same all-masked input; later steps may commit different tokens on near ties.
    torch.testing.assert_close(result[0], reference[0], atol=1e-4, rtol=1e-4)

    # Weights changed in place after compiling (a fine-tune loaded, a LoRA merged): the compiled code follows.
    for pipe in (eager, compiled):
        with torch.no_grad():
            pipe.transformer.project_from_hidden.weight.mul_(-2.0)
    reference, _ = step_logits(eager)
    result, _ = step_logits(compiled)
    torch.testing.assert_close(result[0], reference[0], atol=1e-4, rtol=1e-4)

    # Weights replaced by new tensors (version counters unchanged): the compiled code follows too.
    for pipe in (eager, compiled):
        state = {name: value * 1.5 for name, value in pipe.transformer.state_dict().items()}
        pipe.transformer.load_state_dict(state, assign=True)
    reference, _ = step_logits(eager)
    result, _ = step_logits(compiled)
    torch.testing.assert_close(result[0], reference[0], atol=1e-4, rtol=1e-4)


def test_a_compiler_failure_falls_back_to_eager(tiny_folder, monkeypatch, caplog):
    def broken(*_args, **_kwargs):
        def call(*_inputs):
            raise RuntimeError("no C++ compiler found")

        return call

    reference = step_logits(load(tiny_folder))
    pipe = load(tiny_folder).compile()
    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING):
        result = step_logits(pipe)
    assert "no C++ compiler found" in caplog.text and "eagerly" in caplog.text
    for a, b in zip(result[0], reference[0], strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(result[1], reference[1])
    assert pipe.sampling_transformer(SamplerOptions()) is pipe.transformer  # compilation stays off


def test_what_compilation_leaves_eager(tiny_folder):
    pipe = load(tiny_folder)
    assert pipe.sampling_transformer(SamplerOptions()) is pipe.transformer  # not compiled unless asked
    pipe.compile()
    # Token merging patches the blocks for the duration of a call: that call runs the module itself.
    assert pipe.sampling_transformer(SamplerOptions(tome_ratio=0.25)) is pipe.transformer
    pipe.quantize("int8")  # drops the compiled code; the quantized layers are compiled afresh when next used
    assert pipe._compiled is None


def test_serve_compile_flag_compiles_before_the_first_request(tiny_folder):
    from meissonic.interfaces.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    pipe = serve.build_app(parser.parse_args(["--model", str(tiny_folder), "--compile"])).state.service.pipeline
    compiled, module, _weights = pipe._compiled
    assert module is pipe.transformer
    assert pipe.sampling_transformer(SamplerOptions()) is not pipe.transformer
