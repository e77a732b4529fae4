"""The four pipelines end to end on tiny checkpoints in the released layout."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from meissonic import MeissonicImg2ImgPipeline, MeissonicInpaintPipeline, MeissonicPipeline
from meissonic.pipelines import CheckpointError
from meissonic.sampling.options import SamplerOptions
from meissonic.testing import build_tiny_pipeline_folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_pipeline_folder(tmp_path_factory.mktemp("tiny") / "pipe")


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    pipe = MeissonicPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def transformer_inputs(pipe):
    """Record (tokens, timestep) of every transformer call."""
    calls = []
    handle = pipe.transformer.register_forward_hook(
        lambda module, args, output: calls.append((args[0].clone(), args[3].clone())))
    return calls, handle


@pytest.mark.parametrize("height,width", [(32, 32), (24, 48)])
def test_text2image_sizes_and_determinism(pipe, height, width):
    out = pipe(["a red circle", "two blue squares"], height=height, width=width, num_inference_steps=4,
               generator=seeded(1))
    assert [im.size for im in out.images] == [(width, height)] * 2
    again = pipe(["a red circle", "two blue squares"], height=height, width=width, num_inference_steps=4,
                 generator=seeded(1))
    for a, b in zip(out.images, again.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other = pipe(["a red circle", "two blue squares"], height=height, width=width, num_inference_steps=4,
                 generator=seeded(2), output_type="np")
    assert other.images.shape == (2, height, width, 3)
    assert not np.array_equal(other.images[0], np.asarray(out.images[0]) / 255.0)


def test_released_timesteps_count_down_and_cfg_batches(pipe):
    calls, handle = transformer_inputs(pipe)
    try:
        pipe("a cat", height=32, width=32, num_inference_steps=5, guidance_scale=9.0, generator=seeded())
    finally:
        handle.remove()
    assert [c[1].tolist() for c in calls] == [[t, t] for t in (4, 3, 2, 1, 0)]
    assert all(c[0].shape[0] == 2 for c in calls)  # [uncond; cond]
    assert (calls[0][0] == pipe.transformer.mask_token_id).all()


def test_no_guidance_runs_single_batch(pipe):
    calls, handle = transformer_inputs(pipe)
    try:
        pipe("a cat", height=32, width=32, num_inference_steps=3, guidance_scale=1.0, generator=seeded())
    finally:
        handle.remove()
    assert [c[0].shape[0] for c in calls] == [1, 1, 1]


def test_mask_ratio_convention_feeds_the_masked_fraction(pipe):
    pipe.transformer.register_to_config(timestep_convention="mask_ratio")
    calls, handle = transformer_inputs(pipe)
    try:
        pipe("a cat", height=32, width=32, num_inference_steps=4, guidance_scale=1.0, generator=seeded())
    finally:
        handle.remove()
        pipe.transformer.register_to_config(timestep_convention="step_index")
    for tokens, timestep in calls:
        fraction = (tokens == pipe.transformer.mask_token_id).flatten(1).float().mean(1)
        torch.testing.assert_close(timestep, fraction)
    assert calls[0][1].item() == 1.0


def test_prompt_lists_and_images_per_prompt(pipe):
    out = pipe(["a", "b", "c"], num_images_per_prompt=2, num_inference_steps=2, output_type="tokens",
               negative_prompt=["x", "y", "z"], generator=seeded())
    assert out.images.shape == (6, 8, 8)  # default_resolution 32 / VQ scale 4
    assert (out.images < 64).all()


def test_batch_with_one_generator_per_image_equals_single_calls(pipe):
    prompts = ["a red circle", "a blue square", "green"]
    batch = pipe(prompts, num_inference_steps=4, output_type="tokens",
                 generator=[seeded(s) for s in (5, 6, 7)]).images
    singles = [pipe(p, num_inference_steps=4, output_type="tokens", generator=seeded(s)).images[0]
               for p, s in zip(prompts, (5, 6, 7), strict=True)]
    for a, b in zip(batch, singles, strict=True):
        assert (a == b).float().mean() > 0.95  # float reductions may flip a rare near-tie


def test_img2img_strength(pipe):
    img2img = MeissonicImg2ImgPipeline.from_pipe(pipe)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 48, 3), dtype=np.uint8))
    for strength, masked in [(1.0, 1.0), (0.5, None)]:
        calls, handle = transformer_inputs(img2img)
        try:
            out = img2img("a cat", image=image, strength=strength, num_inference_steps=6, generator=seeded())
        finally:
            handle.remove()
        assert out.images[0].size == (48, 24)
        first = (calls[0][0] == pipe.transformer.mask_token_id).float().mean().item()
        if masked is not None:
            assert first == masked  # strength 1.0 regenerates everything
            assert len(calls) == 6
        else:
            assert len(calls) == 3 and 0.0 < first < 1.0


def test_inpaint_changes_only_the_masked_tokens(pipe):
    inpaint = MeissonicInpaintPipeline.from_pipe(pipe)
    image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    mask = PIL.Image.new("L", (48, 32), 0)
    mask.paste(255, (0, 0, 24, 16))  # top-left quarter of the 8 x 12 token grid... 4 x 6 tokens
    original = inpaint.encode_images(torch.from_numpy(np.asarray(image) / 255.0).permute(2, 0, 1)[None].float())
    out = inpaint(["a", "b"], image=image, mask_image=mask, num_inference_steps=4, output_type="tokens",
                  generator=seeded())
    region = torch.zeros(8, 12, dtype=torch.bool)
    region[:4, :6] = True
    for tokens in out.images:
        assert torch.equal(tokens[~region], original[0][~region])
        assert (tokens != pipe.transformer.mask_token_id).all()
    assert inpaint.scheduler.config.masking_schedule == "cosine"  # the shared scheduler is left alone


def test_outpaint_extends_the_canvas(pipe):
    inpaint = MeissonicInpaintPipeline.from_pipe(pipe)
    image = PIL.Image.new("RGB", (32, 24), (200, 10, 10))
    out = inpaint.outpaint("a wider view", image=image, left=8, right=8, top=0, bottom=8, num_inference_steps=3,
                           generator=seeded())
    assert out.images[0].size == (48, 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        inpaint.outpaint("x", image=image, right=4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(height=36), "not a multiple of 8"),
    (dict(width=8192), "out of range"),
    (dict(height=0), "out of range"),
    (dict(prompt=[]), "empty"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(output_type="jpeg"), "output_type"),
    (dict(negative_prompt=["a", "b"]), "negative prompts"),
    (dict(generator=[torch.Generator()] * 3), "generators"),
])
def test_bad_arguments_fail_early(pipe, kwargs, message):
    args = dict(prompt="a cat", num_inference_steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**args)


def test_image_and_mask_size_mismatch(pipe):
    inpaint = MeissonicInpaintPipeline.from_pipe(pipe)
    with pytest.raises(ValueError, match="mask size"):
        inpaint("x", image=PIL.Image.new("RGB", (32, 32)), mask_image=PIL.Image.new("L", (16, 32)))
    with pytest.raises(ValueError, match="strength"):
        MeissonicImg2ImgPipeline.from_pipe(pipe)("x", image=PIL.Image.new("RGB", (32, 32)), strength=0.0)


def test_save_and_reload_gives_the_same_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    again = MeissonicPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    a = pipe("a red circle", num_inference_steps=3, generator=seeded(), output_type="np").images
    b = again("a red circle", num_inference_steps=3, generator=seeded(), output_type="np").images
    assert np.array_equal(a, b)
    assert again.config.default_resolution == 32
    assert (tmp_path / "saved" / "tokenizer" / "vocab.json").is_file()
    assert (tmp_path / "saved" / "tokenizer" / "merges.txt").is_file()
    (tmp_path / "saved" / "tokenizer" / "tokenizer.json").unlink()  # the released layout alone must load
    from transformers import CLIPTokenizer

    released = CLIPTokenizer.from_pretrained(tmp_path / "saved" / "tokenizer")
    assert released("a red circle").input_ids == pipe.tokenizer("a red circle").input_ids


def test_fp16_variant_and_bf16_dtype(tiny_folder, tmp_path):
    folder = tmp_path / "variant"
    shutil.copytree(tiny_folder, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.half() for k, v in load_file(weights).items()},
              folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors")
    weights.unlink()
    pipe = MeissonicPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == torch.bfloat16
    images = pipe("a", num_inference_steps=2, generator=seeded(), output_type="np").images
    assert np.isfinite(images).all()


def broken_copy(tiny_folder, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_folder, folder)
    return folder


def test_missing_files_are_named(tiny_folder, tmp_path):
    folder = broken_copy(tiny_folder, tmp_path)
    (folder / "vqvae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="vqvae has no weights"):
        MeissonicPipeline.from_pretrained(folder)
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(CheckpointError, match="no 'scheduler' folder"):
        MeissonicPipeline.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        MeissonicPipeline.from_pretrained(tmp_path / "nowhere")


def test_unknown_key_and_wrong_shape_are_named(tiny_folder, tmp_path):
    folder = broken_copy(tiny_folder, tmp_path)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({**state, "extra.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match="unknown key 'extra.weight'"):
        MeissonicPipeline.from_pretrained(folder)
    state["context_embedder.weight"] = torch.zeros(3, 3)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="'context_embedder.weight' has shape"):
        MeissonicPipeline.from_pretrained(folder)
    del state["context_embedder.weight"]
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="missing key 'context_embedder.weight'"):
        MeissonicPipeline.from_pretrained(folder)


def test_pickle_weights_are_refused(tiny_folder, tmp_path):
    folder = broken_copy(tiny_folder, tmp_path)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(CheckpointError, match="pickle"):
        MeissonicPipeline.from_pretrained(folder)


def test_unknown_component_class_is_refused(tiny_folder, tmp_path):
    folder = broken_copy(tiny_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["evil_module", "Backdoor"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="Backdoor"):
        MeissonicPipeline.from_pretrained(folder)


def test_src_transformer_module_name_loads(tiny_folder, tmp_path):
    folder = broken_copy(tiny_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["src.transformer", "Transformer2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert MeissonicPipeline.from_pretrained(folder).transformer.config.downsample


def test_step_callback_can_read_and_replace_tokens(pipe):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, timestep, tensors["tokens"].clone()))
        return {"tokens": tensors["tokens"]}

    pipe("a", num_inference_steps=3, generator=seeded(), callback_on_step_end=callback)
    assert [(s, t) for s, t, _ in seen] == [(0, 2), (1, 1), (2, 0)]
    assert (seen[-1][2] != pipe.transformer.mask_token_id).all()


def test_checkpoint_sampling_defaults(tiny_folder, tmp_path):
    folder = broken_copy(tiny_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(default_steps=3, default_guidance_scale=1.0)
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = MeissonicPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    calls, handle = transformer_inputs(pipe)
    try:
        pipe("a cat", generator=seeded())
    finally:
        handle.remove()
    assert len(calls) == 3 and calls[0][0].shape[0] == 1  # 3 steps, no guidance batch
    assert MeissonicInpaintPipeline.from_pipe(pipe).config.default_steps == 3
    released = MeissonicPipeline.from_pretrained(tiny_folder)
    assert (released.config.default_steps, released.config.default_guidance_scale) == (48, 9.0)


def test_token_temperature_sharpens_the_draw(pipe):
    """Near 0 the token temperature turns every draw into the argmax of the guided logits; 1 is the reference
    sampler, whose draws spread over the distribution."""
    logits = []
    handle = pipe.transformer.register_forward_hook(lambda module, args, output: logits.append(output.float()))
    kwargs = dict(height=32, width=32, num_inference_steps=1, guidance_scale=1.0, output_type="tokens")
    try:
        cold = pipe("a cat", generator=seeded(), token_temperature=1e-4, **kwargs).images
        warm = [pipe("a cat", generator=seeded(s), **kwargs).images for s in range(3)]
        explicit = pipe("a cat", generator=seeded(0), token_temperature=1.0, **kwargs).images
    finally:
        handle.remove()
    argmax = logits[0].argmax(1)  # (1, h, w): one step fills every token from the all-masked prediction
    assert torch.equal(cold, argmax)
    assert not all(torch.equal(w, argmax) for w in warm)
    assert torch.equal(explicit, warm[0])  # 1 is the default
    with pytest.raises(ValueError, match="token_temperature"):
        pipe("a cat", token_temperature=0.0, **kwargs)


def test_late_token_temperature_sharpens_only_the_late_steps(pipe):
    """With 2 steps, step 0 is early and step 1 late: a late temperature near 0 leaves step 0's draws as they
    were and turns step 1's (which fills every remaining token) into the argmax of its logits."""
    logits, grids = [], []
    handle = pipe.transformer.register_forward_hook(lambda module, args, output: logits.append(output.float()))
    kwargs = dict(height=32, width=32, num_inference_steps=2, guidance_scale=1.0, output_type="tokens",
                  callback_on_step_end=lambda p, i, t, tensors: grids.append(tensors["tokens"].clone()))
    try:
        plain = pipe("a cat", generator=seeded(3), **kwargs).images
        cold = pipe("a cat", generator=seeded(3), late_token_temperature=1e-4, **kwargs).images
    finally:
        handle.remove()
    mask_id = pipe.transformer.mask_token_id
    assert torch.equal(grids[0], grids[2])  # step 0: the same draws
    late = grids[2] == mask_id  # what step 1 decides
    assert late.any() and not torch.equal(plain, cold)
    assert torch.equal(cold[late], logits[3].argmax(1)[late])
    assert torch.equal(cold[~late], grids[2][~late])


def test_guidance_outside_the_interval_is_a_weaker_guidance(pipe):
    """guidance_outside keeps a share of the guidance outside guidance_interval: with 4 steps, scale 3, interval
    (0, 0.5) and share 0.5, every call runs both branches, and the late steps combine them at scale 2."""
    outputs, used = [], []
    handle = pipe.transformer.register_forward_hook(lambda m, args, out: outputs.append(out.float()))
    kwargs = dict(height=32, width=32, num_inference_steps=4, guidance_scale=3.0, output_type="tokens",
                  sampler="guidance_interval=0:0.5,guidance_outside=0.5",
                  callback_on_step_end=lambda p, i, t, tensors: used.append(tensors["logits"].clone()))
    try:
        pipe("a cat", generator=seeded(), **kwargs)
    finally:
        handle.remove()
    assert [out.shape[0] for out in outputs] == [2, 2, 2, 2]
    for step, scale in enumerate([3.0, 3.0, 2.0, 2.0]):
        uncond, cond = outputs[step].chunk(2)
        assert torch.allclose(used[step], uncond + scale * (cond - uncond), atol=1e-5)
    with pytest.raises(ValueError, match="guidance_outside"):
        pipe("a cat", guidance_outside=2.0, height=32, width=32)


def test_checkpoint_default_sampler(tiny_folder, tmp_path):
    """A `default_sampler` in model_index.json is the text-to-image sampler when the call names none: guidance in
    the first half of 4 steps runs the unconditional batch twice; an explicit sampler replaces it, single options
    apply on top of it, and it survives save_pretrained / from_pipe. Edits keep vanilla decoding."""
    folder = broken_copy(tiny_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(default_steps=4, default_guidance_scale=3.0, default_sampler={"guidance_interval": [0.0, 0.5]})
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = MeissonicPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.default_sampler_options == SamplerOptions(guidance_interval=(0.0, 0.5))

    def batches(run):
        calls, handle = transformer_inputs(pipe)
        try:
            run()
        finally:
            handle.remove()
        return [tokens.shape[0] for tokens, _ in calls]

    kwargs = dict(height=32, width=32)
    assert batches(lambda: pipe("a cat", **kwargs)) == [2, 2, 1, 1]
    assert batches(lambda: pipe("a cat", sampler="vanilla", **kwargs)) == [2, 2, 2, 2]
    assert batches(lambda: pipe("a cat", guidance_interval=(0.0, 0.75), **kwargs)) == [2, 2, 2, 1]
    kwargs.update(output_type="tokens")
    default = pipe("a cat", generator=seeded(), **kwargs).images
    on_top = pipe("a cat", generator=seeded(), token_temperature=1e-4, **kwargs).images
    explicit = pipe("a cat", generator=seeded(), sampler="guidance_interval=0:0.5,token_temperature=1e-4",
                    **kwargs).images
    assert torch.equal(on_top, explicit) and not torch.equal(on_top, default)

    pipe.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert saved["default_sampler"] == {"guidance_interval": [0.0, 0.5]}
    reloaded = MeissonicPipeline.from_pretrained(tmp_path / "saved")
    assert reloaded.default_sampler_options == pipe.default_sampler_options
    inpaint = MeissonicInpaintPipeline.from_pipe(pipe)
    assert inpaint.default_sampler_options == pipe.default_sampler_options
    image, mask = PIL.Image.new("RGB", (32, 32)), PIL.Image.new("L", (32, 32), 255)
    assert batches(lambda: inpaint("a cat", image=image, mask_image=mask, num_inference_steps=4,
                                   guidance_scale=3.0, generator=seeded())) == [2, 2, 2, 2]

    assert MeissonicPipeline.from_pretrained(tiny_folder).default_sampler_options == SamplerOptions()
    index["default_sampler"] = {"guidance_interval": [0.5, 0.2]}
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="default_sampler: sampler option guidance_interval"):
        MeissonicPipeline.from_pretrained(folder)


def test_decode_tokens_equals_the_vq_decoder_in_its_own_layout(pipe):
    """The pipeline decodes channels-last on CPU for speed; the images are the VQ decoder's, contiguous, and
    each is the same whatever batch it is decoded in."""
    vq = pipe.vqvae
    tokens = torch.randint(0, vq.config.num_vq_embeddings, (2, 4, 6))
    images = pipe.decode_tokens(tokens)
    with torch.no_grad():
        channels = vq.config.vq_embed_dim or vq.config.latent_channels
        quant = vq.quantize.get_codebook_entry(tokens.reshape(-1), (2, 4, 6, channels))  # NCHW
        spatial = quant if vq.config.norm_type == "spatial" else None
        expected = vq.decoder(vq.post_quant_conv(quant), spatial).float().clamp(0, 1)
    assert images.shape == (2, 3, 4 * pipe.vq_scale, 6 * pipe.vq_scale) and images.is_contiguous()
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-5)
    for i in range(2):  # an image does not depend on the batch it is decoded in
        assert torch.equal(pipe.decode_tokens(tokens[i : i + 1])[0], images[i])


def test_checkpoint_prompt_rewrites(tiny_folder, tmp_path):
    """`prompt_rewrites` in model_index.json change what the model reads, in every pipeline call and in
    encode_prompt, survive save_pretrained / from_pipe, and are turned off by from_pretrained(prompt_rewrites=[])."""
    folder = broken_copy(tiny_folder, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["prompt_rewrites"] = [[r"^a (\w+) right of a (\w+)$", r"a \2 left of a \1"]]
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = MeissonicPipeline.from_pretrained(folder)
    plain = MeissonicPipeline.from_pretrained(folder, prompt_rewrites=[])
    for p in (pipe, plain):
        p.set_progress_bar_config(disable=True)
    assert pipe.rewrite_prompt("a cat right of a dog") == "a dog left of a cat"
    assert pipe.rewrite_prompt("a cat above a dog") == "a cat above a dog"
    assert plain.rewrite_prompt("a cat right of a dog") == "a cat right of a dog"

    states, _ = pipe.encode_prompt(["a cat right of a dog"])
    assert torch.equal(states, plain.encode_prompt(["a dog left of a cat"])[0])
    assert not torch.equal(states, plain.encode_prompt(["a cat right of a dog"])[0])

    def logits(p, prompt):  # the guided logits of every step
        used = []
        p(prompt, height=32, width=32, num_inference_steps=4, guidance_scale=3.0, output_type="tokens",
          generator=seeded(), callback_on_step_end=lambda _, i, t, tensors: used.append(tensors["logits"].clone()))
        return torch.stack(used)

    read = logits(pipe, "a cat right of a dog")
    assert torch.equal(read, logits(plain, "a dog left of a cat"))
    assert not torch.equal(read, logits(plain, "a cat right of a dog"))

    pipe.save_pretrained(tmp_path / "saved")
    reloaded = MeissonicPipeline.from_pretrained(tmp_path / "saved")
    assert reloaded.config.prompt_rewrites == index["prompt_rewrites"]
    assert MeissonicImg2ImgPipeline.from_pipe(pipe).rewrite_prompt("a cat right of a dog") == "a dog left of a cat"


@pytest.mark.parametrize("rules,message", [
    ([["(", "x"]], r"prompt_rewrites\[0\]"),
    ([["a", "x"], ["(?P<a>b)", r"\g<c>"]], r"prompt_rewrites\[1\].*'c'"),
    (["ab"], "pair of strings"),
    ([["a", 1]], "pair of strings"),
])
def test_bad_prompt_rewrites_are_refused(tiny_folder, rules, message):
    with pytest.raises(ValueError, match=message):
        MeissonicPipeline.from_pretrained(tiny_folder, prompt_rewrites=rules)
