"""Preference (DPO) training on pairs of token grids: it starts at log 2 against its frozen copy, learns only from
what differs between the two grids of a pair, ranks the pairs it trains on, leaves CFG-dropped pairs to the
masked-token term, and resumes exactly."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train_helpers import tiny_train_config, write_config, write_preencoded

from meissonic.data import PreencodedSource
from meissonic.training.config import load_config
from meissonic.training.objective import masked_log_likelihood, preference_loss
from meissonic.training.train import Trainer


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Preencoded renders (the chosen grids) and, per flavour, a copy whose rows carry a rejected grid."""
    root = tmp_path_factory.mktemp("preference")
    data, vq, _ = write_preencoded(root)

    def pairs(name: str, rejected) -> str:
        folder = root / name
        folder.mkdir()
        for path in (root / "plain").iterdir():
            if path.name.startswith("shard-"):
                rows = load_file(str(path))
                rows["rejected_tokens"] = rejected(rows["tokens"])
                save_file(rows, str(folder / path.name))
            else:
                (folder / path.name).write_bytes(path.read_bytes())
        return str(folder)

    noise = torch.Generator().manual_seed(0)
    return {
        "root": root, "data": data, "vq": vq, "plain": str(root / "plain"),
        "random": pairs("random", lambda t: torch.randint(0, 64, t.shape, generator=noise).to(t.dtype)),
        "same": pairs("same", lambda t: t.clone()),
    }


def preference_config(encoded, tmp_path, data: str, **changes) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tiny_train_config(tmp_path, encoded["data"], encoded["vq"], **{
        "data.path": data, "data.format": "preencoded", "objective.preference_beta": 0.05,
        "objective.cfg_dropout": 0.0, "optim.warmup_steps": 0, **changes,
    })
    return load_config(write_config(tmp_path / "c.yaml", config))


def log_rows(run_dir) -> list[dict]:
    with open(run_dir / "log.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_dpo_loss_is_log_two_at_equal_margins_and_decreases_with_the_margin():
    zero = torch.zeros(3)
    losses, margins = preference_loss(zero + 1, zero - 2, zero + 1, zero - 2, beta=0.5)
    assert torch.allclose(losses, torch.full((3,), math.log(2))) and torch.equal(margins, zero)
    losses, margins = preference_loss(torch.tensor([0.0]), torch.tensor([-4.0]), torch.tensor([-1.0]),
                                      torch.tensor([-2.0]), beta=0.5)
    assert margins.item() == 3.0
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.5)))
    # The likelihood sums log-probabilities over the masked positions only.
    logits = torch.randn(2, 5, 2, 2)
    tokens = torch.randint(0, 5, (2, 2, 2))
    masks = torch.tensor([[True, False, False, True], [False, False, False, False]])
    log_probs = logits.log_softmax(1)
    expected = log_probs[0, tokens[0, 0, 0], 0, 0] + log_probs[0, tokens[0, 1, 1], 1, 1]
    assert torch.allclose(masked_log_likelihood(logits, tokens, masks), torch.stack([expected, torch.zeros(())]))


def test_starts_at_log_two_and_learns_to_rank_the_pairs(encoded, tmp_path):
    config = preference_config(encoded, tmp_path, encoded["random"], max_steps=30, batch_size=8)
    Trainer(config).run(export=False)
    rows = log_rows(tmp_path / "run")
    # Step 1: the model is its own reference, so margins are 0 up to bf16 rounding (the attention kernel with
    # gradients is not the one without) and the loss is log 2.
    assert rows[0]["dpo"] == pytest.approx(math.log(2), abs=1e-3)
    assert abs(rows[0]["margin"]) < 0.05
    late = rows[-5:]
    assert min(r["pair_accuracy"] for r in late) >= 0.75
    assert sum(r["margin"] for r in late) / 5 > 5
    assert sum(r["dpo"] for r in late) / 5 < 0.5 * math.log(2)


def test_identical_grids_give_no_gradient(encoded, tmp_path):
    config = preference_config(encoded, tmp_path, encoded["same"], max_steps=3)
    Trainer(config).run(export=False)
    for row in log_rows(tmp_path / "run"):
        assert row["dpo"] == pytest.approx(math.log(2), abs=1e-6)
        assert row["grad_norm"] < 1e-5


def test_cfg_dropped_pairs_train_only_through_the_masked_token_term(encoded, tmp_path):
    config = preference_config(encoded, tmp_path / "a", encoded["random"], max_steps=2,
                               **{"objective.cfg_dropout": 1.0})
    Trainer(config).run(export=False)
    for row in log_rows(tmp_path / "a" / "run"):
        assert row["dpo"] == 0 and row["grad_norm"] == 0
    config = preference_config(encoded, tmp_path / "b", encoded["random"], max_steps=2,
                               **{"objective.cfg_dropout": 1.0, "objective.preference_sft_weight": 1.0})
    Trainer(config).run(export=False)
    assert all(row["dpo"] == 0 and row["grad_norm"] > 0 for row in log_rows(tmp_path / "b" / "run"))


def test_resumed_run_keeps_the_starting_weights_as_reference(encoded, tmp_path):
    whole = preference_config(encoded, tmp_path / "whole", encoded["random"], max_steps=4,
                              **{"checkpoint.every": 2})
    Trainer(whole).run(export=False)
    first = preference_config(encoded, tmp_path / "cut", encoded["random"], max_steps=2,
                              **{"checkpoint.every": 2})
    Trainer(first).run(export=False)
    second = preference_config(encoded, tmp_path / "cut", encoded["random"], max_steps=4,
                               **{"checkpoint.every": 2})
    Trainer(second, resume=True).run(export=False)
    final = "checkpoints/step-00000004/model.safetensors"
    a, b = load_file(str(tmp_path / "whole/run" / final)), load_file(str(tmp_path / "cut/run" / final))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["dpo"] for r in log_rows(tmp_path / "whole/run")] == [r["dpo"] for r in log_rows(tmp_path / "cut/run")]


def test_refuses_data_without_rejected_grids_and_a_trained_text_encoder(encoded, tmp_path):
    assert "rejected_tokens" not in PreencodedSource(encoded["plain"]).read(0)
    with pytest.raises(ValueError, match="rejected_tokens"):
        Trainer(preference_config(encoded, tmp_path, encoded["plain"]))
    with pytest.raises(ValueError, match="frozen text encoder"):
        preference_config(encoded, tmp_path, encoded["random"], **{"objective.train_text_encoder": True})
    with pytest.raises(ValueError, match="preference_beta must be >= 0"):
        preference_config(encoded, tmp_path, encoded["random"], **{"objective.preference_beta": -1.0})
