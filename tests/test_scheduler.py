"""Properties of the parallel-decoding scheduler."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meissonic.sampling import MeissonicScheduler, mask_ratio

MASK = 31


def run(scheduler, batch, height, width, steps, seed=0, classes=16, schedule=None, start=1.0, tokens=None,
        record=None, early_steps=0.5):
    generator = torch.Generator().manual_seed(seed)
    logits_gen = torch.Generator().manual_seed(seed + 1)
    sample = torch.full((batch, height, width), MASK) if tokens is None else tokens.clone()
    for i in range(steps):
        logits = torch.randn(batch, classes, height, width, generator=logits_gen)
        sample = scheduler.step(logits, i, steps, sample, generator=generator, masking_schedule=schedule,
                                starting_mask_ratio=start, early_steps=early_steps).prev_sample
        if record is not None:
            record.append((sample == MASK).flatten(1).sum(-1))
    return sample


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), height=st.integers(1, 6), width=st.integers(1, 6), steps=st.integers(1, 12),
       schedule=st.sampled_from(["cosine", "linear"]), early_steps=st.sampled_from([0.5, 0.25, 2 / 3, 0.9]))
def test_masked_counts_follow_the_schedule(batch, height, width, steps, schedule, early_steps):
    scheduler = MeissonicScheduler(mask_token_id=MASK)
    seq_len = height * width
    counts = []
    final = run(scheduler, batch, height, width, steps, schedule=schedule, record=counts, early_steps=early_steps)
    previous = torch.full((batch,), seq_len)
    for i, count in enumerate(counts[:-1]):
        fraction = (i + 1) / steps  # the first early_steps of the steps cover the first half of the schedule
        progress = fraction * 0.5 / early_steps if fraction <= early_steps else \
            0.5 + 0.5 * (fraction - early_steps) / (1 - early_steps)
        target = math.floor(seq_len * float(mask_ratio(progress, schedule)))
        expected = torch.clamp(torch.minimum(torch.tensor(target), previous - 1), min=1)
        expected = torch.where(previous > 0, expected, torch.zeros_like(expected))
        assert torch.equal(count, expected), (i, count, expected)
        assert (count <= previous).all()
        previous = count
    assert (final != MASK).all() and (final < 16).all()


def test_known_tokens_never_change():
    scheduler = MeissonicScheduler(mask_token_id=MASK)
    tokens = torch.randint(0, 16, (2, 4, 4))
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0, :2] = True
    region[1, :, 1] = True
    start = region.flatten(1).float().mean(1)
    out = run(scheduler, 2, 4, 4, 6, tokens=tokens.masked_fill(region, MASK), schedule="linear", start=start)
    assert torch.equal(out[~region], tokens[~region])
    assert (out != MASK).all()


def test_same_generator_same_result_and_no_state_between_calls():
    scheduler = MeissonicScheduler(mask_token_id=MASK)
    a = run(scheduler, 2, 4, 4, 5, seed=3)
    run(scheduler, 1, 2, 2, 3, seed=9, schedule="linear", start=0.5)  # another call in between
    b = run(scheduler, 2, 4, 4, 5, seed=3)
    assert torch.equal(a, b)
    assert scheduler.config.masking_schedule == "cosine"


def test_batch_is_independent_of_its_neighbours():
    """The counts are per sample: a half-known neighbour does not change a fully masked sample's schedule."""
    scheduler = MeissonicScheduler(mask_token_id=MASK)
    tokens = torch.full((2, 4, 4), MASK)
    tokens[1, :2] = 3
    counts = []
    run(scheduler, 2, 4, 4, 4, tokens=tokens, record=counts)
    assert [int(c[0]) for c in counts] == [
        max(1, min(math.floor(16 * math.cos(math.pi / 2 * (i + 1) / 4)), 15 if i == 0 else 16)) for i in range(3)
    ] + [0]


def test_draws_follow_the_probabilities():
    scheduler = MeissonicScheduler(mask_token_id=MASK)
    logits = torch.full((1, 4, 64, 64), -1e4)
    logits[:, 2] = 0.0
    logits[:, 3] = math.log(3.0)  # p = 1/4 for token 2, 3/4 for token 3
    sample = torch.full((1, 64, 64), MASK)
    drawn = scheduler.step(logits, 0, 1, sample, generator=torch.Generator().manual_seed(0)).prev_sample
    assert set(drawn.unique().tolist()) == {2, 3}
    assert abs((drawn == 3).float().mean().item() - 0.75) < 0.03


def test_add_noise_masks_an_exact_count():
    scheduler = MeissonicScheduler(mask_token_id=MASK)
    tokens = torch.randint(0, 16, (3, 8, 8))
    for ratio, count in [(0.0, 0), (0.5, 32), (1.0, 64)]:
        noisy = scheduler.add_noise(tokens, ratio, torch.Generator().manual_seed(0))
        assert ((noisy == MASK).flatten(1).sum(-1) == count).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="masking schedule"):
        MeissonicScheduler(masking_schedule="square")
    scheduler = MeissonicScheduler(mask_token_id=MASK)
    with pytest.raises(ValueError, match="step_index"):
        scheduler.step(torch.zeros(1, 4, 2, 2), 5, 5, torch.full((1, 2, 2), MASK))


def test_least_confident_tokens_are_remasked_without_temperature():
    scheduler = MeissonicScheduler(mask_token_id=MASK)
    logits = torch.zeros(1, 4, 2, 4)  # uniform everywhere ...
    logits[0, 1, 0, :] = 20.0  # ... but the first row is certain
    out = scheduler.step(logits, 0, 2, torch.full((1, 2, 4), MASK), temperature=(0.0, 0.0),
                         generator=torch.Generator().manual_seed(0)).prev_sample
    # cos(pi/4) * 8 = 5.66 -> 5 re-masked: all of the uncertain row and one certain token.
    assert (out[0, 1] == MASK).all()
    assert (out[0, 0] == MASK).sum() == 1 and (out[0, 0][out[0, 0] != MASK] == 1).all()


def test_gumbel_noise_is_finite():
    from meissonic.sampling.scheduler import gumbel_noise

    noise = gumbel_noise(torch.Size([100_000]), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.isfinite(noise).all()
    assert abs(noise.mean().item() - 0.5772) < 0.02  # Euler-Mascheroni constant
