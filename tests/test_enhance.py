"""Enhanced inference: each technique's defining property, and all of them together on any batch."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

from meissonic import MeissonicImg2ImgPipeline, MeissonicInpaintPipeline, MeissonicPipeline
from meissonic.models.tome import destinations, merge_plan, token_merging
from meissonic.sampling import MeissonicScheduler
from meissonic.sampling.enhance import differential_probs, halton_order, halton_priority, kl_per_token, zigzag_remask
from meissonic.sampling.options import SamplerOptions
from meissonic.testing import build_tiny_pipeline_folder

EVERYTHING = SamplerOptions(noise_reg=2.0, differential=True, zigzag=True, guidance_schedule="cosine",
                            guidance_interval=(0.0, 0.8), order="halton", tome_ratio=0.25, tome_reuse=1,
                            token_temperature=0.7)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = MeissonicPipeline.from_pretrained(build_tiny_pipeline_folder(tmp_path_factory.mktemp("tiny") / "pipe"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def record_calls(module):
    """Record the batch size of every forward call of `module`."""
    sizes = []
    handle = module.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    return sizes, handle


# ----- options ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,name", [
    ({"noise_reg": -1.0}, "noise_reg"), ({"differential_fraction": 0.0}, "differential_fraction"),
    ({"guidance_schedule": "exp"}, "guidance_schedule"), ({"guidance_interval": (0.5, 0.2)}, "guidance_interval"),
    ({"order": "random"}, "order"), ({"tome_ratio": 1.0}, "tome_ratio"), ({"tome_reuse": 0}, "tome_reuse"),
    ({"zigzag_guidance": math.nan}, "zigzag_guidance"), ({"token_temperature": 0.0}, "token_temperature"),
    ({"token_temperature": math.inf}, "token_temperature"), ({"token_temperature": True}, "token_temperature"),
    ({"early_steps": 0.0}, "early_steps"), ({"early_steps": 1.0}, "early_steps"), ({"early_steps": "a"}, "early_steps"),
    ({"late_token_temperature": 0.0}, "late_token_temperature"),
    ({"late_token_temperature": True}, "late_token_temperature"),
    ({"guidance_outside": -0.1}, "guidance_outside"), ({"guidance_outside": 1.5}, "guidance_outside"),
    ({"guidance_outside": True}, "guidance_outside"),
])
def test_bad_options_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplerOptions(**kwargs)


def test_parse_presets_and_overrides(tmp_path):
    assert SamplerOptions.parse("vanilla") == SamplerOptions()
    published = SamplerOptions.parse("published, tome_ratio=0.25")
    assert (published.noise_reg, published.differential, published.zigzag, published.tome_ratio) == (2, True, True, .25)
    assert SamplerOptions.parse("guidance_interval=0.2:0.9,order=halton").guidance_interval == (0.2, 0.9)
    (tmp_path / "b.json").write_text('{"differential": true, "differential_fraction": 0.5}')
    assert SamplerOptions.parse(str(tmp_path / "b.json")) == SamplerOptions(differential=True,
                                                                           differential_fraction=0.5)
    with pytest.raises(ValueError, match="unknown sampler option"):
        SamplerOptions.parse("noise=2")
    with pytest.raises(ValueError, match="differential"):
        SamplerOptions.parse("differential=maybe")
    assert SamplerOptions.parse(published.describe()) == published
    assert SamplerOptions.parse("token_temperature=0.5").token_temperature == 0.5
    with pytest.raises(ValueError, match="token_temperature"):
        SamplerOptions.parse("token_temperature=cold")


def test_noise_sigma_is_the_published_cosine_shape():
    options = SamplerOptions(noise_reg=2.0)
    sigmas = [options.noise_sigma(i, 9) for i in range(9)]
    assert sigmas[0] == pytest.approx(2.0) and sigmas[-1] == pytest.approx(2.0) and sigmas[4] == pytest.approx(0.0)
    assert sigmas == pytest.approx([2 * abs(math.cos(math.pi * (8 - i) / 8)) for i in range(9)])
    assert SamplerOptions().noise_sigma(0, 9) == 0.0


def test_guidance_schedules_and_interval():
    constant = SamplerOptions()
    assert [constant.guidance_at(i, 5, 9.0) for i in range(5)] == [9.0] * 5
    linear = SamplerOptions(guidance_schedule="linear")
    assert [linear.guidance_at(i, 5, 9.0) for i in range(5)] == pytest.approx([1, 3, 5, 7, 9])
    cosine = SamplerOptions(guidance_schedule="cosine")
    assert [cosine.guidance_at(i, 5, 9.0) for i in range(5)] == pytest.approx(
        [1 + 8 * (1 - math.cos(math.pi * i / 4)) / 2 for i in range(5)])
    window = SamplerOptions(guidance_interval=(0.2, 0.6))
    assert [window.guidance_at(i, 5, 9.0) for i in range(5)] == [1.0, 9.0, 9.0, 1.0, 1.0]
    kept = SamplerOptions(guidance_interval=(0.2, 0.6), guidance_outside=0.25)  # 1 + 8 * 0.25 outside
    assert [kept.guidance_at(i, 5, 9.0) for i in range(5)] == [3.0, 9.0, 9.0, 3.0, 3.0]
    assert kept.guidance_at(0, 5, 1.0) == 1.0  # still no guidance when the scale asks for none
    assert SamplerOptions.parse("guidance_outside=0.5").changes() == {"guidance_outside": 0.5}
    assert constant.guidance_at(0, 5, 0.5) == 1.0  # scales <= 1 mean no guidance, as in vanilla


def test_late_token_temperature_applies_from_the_middle_of_the_mask_schedule():
    """Steps i >= early_steps * N are late: 14..19 of 20 with early_steps 0.7 (the default model's), 2..3 of 4 with
    the plain schedule; the token temperature applies at every step and the late one on top of it."""
    options = SamplerOptions(early_steps=0.7, token_temperature=0.8, late_token_temperature=0.5)
    assert [options.token_temperature_at(i, 20) for i in range(20)] == pytest.approx([0.8] * 14 + [0.4] * 6)
    plain = SamplerOptions(late_token_temperature=0.5)
    assert [plain.token_temperature_at(i, 4) for i in range(4)] == [1.0, 1.0, 0.5, 0.5]
    assert [SamplerOptions().token_temperature_at(i, 4) for i in range(4)] == [1.0] * 4
    assert SamplerOptions.parse("late_token_temperature=0.5").changes() == {"late_token_temperature": 0.5}


def test_early_steps_decode_the_first_half_of_the_schedule_in_that_fraction_of_the_steps(pipe):
    """With early_steps=2/3 and 24 steps, step 16 leaves exactly the tokens the plain schedule leaves halfway
    (cos(pi/4) of the grid), every step commits at least one token, and the first steps commit fewer tokens than
    the plain schedule's; 0.5 is the plain schedule bit for bit."""
    def masked_after_each_step(**options):
        counts = []
        def count(pipeline, step, timestep, tensors):
            counts.append(int((tensors["tokens"] == pipe.transformer.mask_token_id).sum()))
        grid = pipe("a red circle", height=128, width=128, num_inference_steps=24, guidance_scale=1.0,
                    output_type="tokens", generator=seeded(0), callback_on_step_end=count, **options).images
        return counts, grid

    size = 32 * 32  # 128 px at the tiny VQ's scale 4
    (plain, default), (early, _) = masked_after_each_step(), masked_after_each_step(early_steps=2 / 3)
    assert plain == [math.floor(size * math.cos(math.pi / 2 * (i + 1) / 24)) for i in range(23)] + [0]
    assert early[15] == math.floor(size * math.cos(math.pi / 4)) == plain[11]
    assert all(a > b for a, b in zip([size] + early[:-1], early, strict=True))  # progress at every step
    assert all(e >= p for e, p in zip(early[:15], plain[:15], strict=True))  # finer early steps
    assert early[-1] == 0 and sum(e > p for e, p in zip(early, plain, strict=True)) >= 15
    assert torch.equal(default, masked_after_each_step(early_steps=0.5)[1])


# ----- vanilla equivalence and composition ------------------------------------------------------------------------
def test_zero_noise_and_zero_merge_ratio_are_vanilla_exactly(pipe):
    vanilla = pipe(["a red circle", "b"], num_inference_steps=5, output_type="tokens", generator=seeded(3)).images
    zeroed = pipe(["a red circle", "b"], num_inference_steps=5, output_type="tokens", generator=seeded(3),
                  noise_reg=0.0, tome_ratio=0.0).images
    assert torch.equal(vanilla, zeroed)
    with token_merging(pipe.transformer, 0.0):
        assert all("forward" not in vars(block) for block in pipe.transformer.transformer_blocks)
    noisy = pipe(["a red circle", "b"], num_inference_steps=5, output_type="tokens", generator=seeded(3),
                 noise_reg=2.0).images
    assert not torch.equal(vanilla, noisy)


def test_batch_of_three_equals_three_single_calls_with_everything_on(pipe):
    prompts = ["a red circle", "a blue square", "green"]
    batch = pipe(prompts, num_inference_steps=4, output_type="tokens", generator=[seeded(s) for s in (5, 6, 7)],
                 sampler=EVERYTHING).images
    singles = [pipe(p, num_inference_steps=4, output_type="tokens", generator=seeded(s), sampler=EVERYTHING).images[0]
               for p, s in zip(prompts, (5, 6, 7), strict=True)]
    for a, b in zip(batch, singles, strict=True):
        assert (a == b).float().mean() > 0.95  # float reductions may flip a rare near-tie
    again = pipe(prompts, num_inference_steps=4, output_type="tokens", generator=[seeded(s) for s in (5, 6, 7)],
                 sampler=EVERYTHING).images
    assert torch.equal(batch, again)  # nothing is carried from one call to the next
    assert all("forward" not in vars(block) for block in pipe.transformer.transformer_blocks)


def test_string_sampler_and_keyword_overrides(pipe):
    a = pipe("a", num_inference_steps=3, output_type="tokens", generator=seeded(), sampler="published").images
    b = pipe("a", num_inference_steps=3, output_type="tokens", generator=seeded(), noise_reg=2.0, differential=True,
             zigzag=True).images
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="noise_regularization"):
        pipe("a", num_inference_steps=3, noise_regularization=2.0)


def test_edit_pipelines_take_every_option(pipe):
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    img2img = MeissonicImg2ImgPipeline.from_pipe(pipe)
    out = img2img("a", image=image, strength=0.7, num_inference_steps=4, generator=seeded(), output_type="tokens",
                  sampler=EVERYTHING).images
    assert out.shape == (1, 8, 8) and (out < 64).all()
    inpaint = MeissonicInpaintPipeline.from_pipe(pipe)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, :16] = 255
    original = pipe.encode_images(torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 255)
    out = inpaint("a", image=image, mask_image=PIL.Image.fromarray(mask), num_inference_steps=4, generator=seeded(),
                  output_type="tokens", sampler=EVERYTHING).images
    assert torch.equal(out[0, :, 4:], original[0, :, 4:])  # Z-sampling never re-masks kept tokens


# ----- masked Z-sampling ------------------------------------------------------------------------------------------
def test_zigzag_makes_three_model_calls_per_step_but_the_last(pipe):
    sizes, handle = record_calls(pipe.transformer)
    try:
        pipe("a", num_inference_steps=4, guidance_scale=9.0, generator=seeded(), zigzag=True)
    finally:
        handle.remove()
    assert len(sizes) == 3 * 3 + 1
    # step, inversion (guidance 0: the unconditional branch alone), step again; the last step is a normal one
    assert sizes == [2, 1, 2] * 3 + [2]


def test_zigzag_remask_takes_the_most_confident_eligible_tokens():
    logits = torch.full((1, 4, 2, 3), -10.0)
    tokens = torch.tensor([[[0, 1, 2], [3, 9, 0]]])  # 9 = mask id
    confidence = [5.0, 4.0, 3.0, 2.0, 0.0, 1.0]  # logit of each position's current token
    for pos, value in enumerate(confidence):
        row, col = divmod(pos, 3)
        if tokens[0, row, col] != 9:
            logits[0, tokens[0, row, col], row, col] = value
    eligible = torch.tensor([[False, True, True, True, True, True]])  # position 0 is a kept token
    out = zigzag_remask(tokens, logits, torch.tensor([2]), eligible, mask_id=9)
    assert (out.flatten() == 9).nonzero().flatten().tolist() == [1, 2, 4]  # 4 was already masked
    none = zigzag_remask(tokens, logits, torch.tensor([-1]), eligible, mask_id=9)
    assert torch.equal(none, tokens)


# ----- differential sampling --------------------------------------------------------------------------------------
def test_differential_probs_use_the_positive_difference_on_the_lowest_kl_fraction():
    gen = seeded(1)
    probs = torch.softmax(torch.randn(2, 16, 5, generator=gen) * 3, -1)
    previous = torch.softmax(torch.randn(2, 16, 5, generator=gen) * 3, -1)
    draw, chosen = differential_probs(probs, previous, 0.75)
    kl = kl_per_token(probs, previous)
    assert (chosen.sum(-1) == 12).all()
    for b in range(2):
        assert set(chosen[b].nonzero().flatten().tolist()) == set(kl[b].argsort()[:12].tolist())
    expected = (probs - previous).clamp(min=1e-6)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(draw[chosen], expected[chosen])
    torch.testing.assert_close(draw[~chosen], probs[~chosen])


def test_scheduler_draws_from_the_given_distribution():
    scheduler = MeissonicScheduler(mask_token_id=9)
    logits = torch.zeros(1, 4, 2, 2)
    draw = torch.zeros(1, 4, 4)
    draw[..., 3] = 1.0  # all mass on code 3
    sample = torch.full((1, 2, 2), 9)
    drawn = scheduler.step(logits, 3, 4, sample, generator=seeded(), draw_probs=draw).prev_sample
    assert (drawn == 3).all()


def test_differential_sampling_changes_the_draws_in_the_pipeline(pipe):
    a = pipe("a", num_inference_steps=4, output_type="tokens", generator=seeded()).images
    b = pipe("a", num_inference_steps=4, output_type="tokens", generator=seeded(), differential=True).images
    assert not torch.equal(a, b)


# ----- Halton order -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(8, 8), (6, 10), (64, 64), (1, 1)])
def test_halton_order_visits_every_position_once(height, width):
    order = halton_order(height, width)
    assert sorted(order.tolist()) == list(range(height * width))


def test_halton_unmasking_follows_the_order_and_ignores_the_logits():
    scheduler = MeissonicScheduler(mask_token_id=64)
    order = halton_order(8, 8)
    priority = halton_priority(8, 8, 2, torch.device("cpu"))
    tokens = torch.full((2, 8, 8), 64)
    decided = []
    for trial in range(2):
        logits = torch.randn(2, 64, 8, 8, generator=seeded(trial)) * 5
        out = scheduler.step(logits, 0, 8, tokens, generator=seeded(trial), priority=priority).prev_sample
        decided.append(out.flatten(1) != 64)
    assert torch.equal(decided[0], decided[1])
    count = int(decided[0][0].sum())
    assert set(decided[0][0].nonzero().flatten().tolist()) == set(order[:count].tolist())
    # the next step continues in the same order
    step1 = scheduler.step(torch.randn(2, 64, 8, 8), 1, 8, out, generator=seeded(), priority=priority).prev_sample
    known = (step1.flatten(1)[0] != 64).nonzero().flatten().tolist()
    assert set(known) == set(order[:len(known)].tolist()) and len(known) > count


# ----- TomeMGT ----------------------------------------------------------------------------------------------------
def test_merge_plan_one_destination_per_window_and_mean_merge():
    is_dst = destinations(4, 6, seeded())
    assert is_dst.view(2, 2, 3, 2).transpose(1, 2).sum((-1, -2)).eq(1).all()
    x = torch.randn(24, 8, generator=seeded(1))
    plan = merge_plan(x, is_dst, 0.25)
    assert len(plan.keep) == 24 - 6 and is_dst[plan.keep].sum() == 6  # every destination survives
    merged = plan.merge(x[None])[0]
    for slot in range(len(plan.keep)):
        members = (plan.source == slot).nonzero().flatten()
        torch.testing.assert_close(merged[slot], x[members].mean(0))
    torch.testing.assert_close(plan.unmerge(merged[None])[0][plan.keep], merged)


def test_token_merging_shrinks_attention_and_restores_the_model(pipe):
    seen = []
    handle = pipe.transformer.transformer_blocks[0].attn.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].shape[1]))
    try:
        merged = pipe("a", num_inference_steps=2, guidance_scale=1.0, output_type="tokens", generator=seeded(),
                      tome_ratio=0.25).images
        pipe("a", num_inference_steps=1, guidance_scale=1.0, output_type="tokens", generator=seeded())
    finally:
        handle.remove()
    assert seen == [16 - 4, 16 - 4, 16]  # 32 px -> 8x8 tokens -> 4x4 after compression; a quarter merged
    assert merged.shape == (1, 8, 8)
    assert all("forward" not in vars(block) for block in pipe.transformer.transformer_blocks)
