"""Merging a VQ's codes: weighted k-means, the merged VQModel, and `meissonic merge-codes`."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_helpers import write_imagefolder

from meissonic.interfaces.cli import main
from meissonic.training.merge_codes import code_usage, merge_codes, weighted_kmeans
from meissonic.training.tiny import tiny_vqvae


def test_weighted_kmeans_finds_separated_clusters_and_weighted_means():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=generator) for c in centres])
    weights = torch.rand(60, generator=generator) + 0.5
    centroids, assignment = weighted_kmeans(points, weights, 3, seed=1)
    for block in range(3):  # each blob is exactly one cluster
        members = assignment[block * 20 : (block + 1) * 20]
        assert (members == members[0]).all()
    assert len(set(assignment.tolist())) == 3
    for cluster in range(3):
        chosen = assignment == cluster
        expected = (points[chosen] * weights[chosen, None]).sum(0) / weights[chosen].sum()
        assert torch.allclose(centroids[cluster], expected, atol=1e-5)


def test_weighted_kmeans_rejects_bad_input():
    points = torch.randn(5, 2)
    with pytest.raises(ValueError, match="clusters"):
        weighted_kmeans(points, torch.ones(5), 6)
    with pytest.raises(ValueError, match="weights"):
        weighted_kmeans(points, torch.zeros(5), 2)


def test_merged_vq_keeps_the_networks_and_averages_the_codes(tmp_path):
    from diffusers import VQModel

    vqvae = tiny_vqvae(codes=64, channels=16, latent_channels=4)
    usage = torch.randint(0, 50, (64,))
    usage[:5] = 0  # unused codes still get a cluster
    merged, mapping = merge_codes(vqvae, 8, usage, seed=0)
    assert merged.config.num_vq_embeddings == 8 and mapping.shape == (64,)
    assert set(mapping.tolist()) <= set(range(8))
    old, new = vqvae.state_dict(), merged.state_dict()
    assert old.keys() == new.keys()
    for key in old:
        if key != "quantize.embedding.weight":
            assert torch.equal(old[key].float(), new[key]), key
    codebook = vqvae.quantize.embedding.weight.detach()
    weights = usage.double().clamp(min=1e-6)
    for cluster in range(8):
        members = mapping == cluster
        if members.any():
            expected = (codebook[members].double() * weights[members, None]).sum(0) / weights[members].sum()
            assert torch.allclose(new["quantize.embedding.weight"][cluster].double(), expected, atol=1e-5)
    merged.save_pretrained(str(tmp_path / "merged"), safe_serialization=True)
    again = VQModel.from_pretrained(str(tmp_path / "merged"))
    assert torch.equal(again.quantize.embedding.weight, merged.quantize.embedding.weight)
    with pytest.raises(ValueError, match="num_codes"):
        merge_codes(vqvae, 64, usage)
    with pytest.raises(ValueError, match="usage"):
        merge_codes(vqvae, 8, usage[:10])


def test_code_usage_counts_every_token():
    vqvae = tiny_vqvae(codes=16, channels=16, latent_channels=4)
    batches = [torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32)]
    usage = code_usage(vqvae, batches)
    assert usage.shape == (16,) and usage.sum() == 5 * 4 * 4  # 8x downsampling: 4x4 tokens per image


def test_merge_codes_command_writes_a_new_folder_and_never_replaces_one(tmp_path, capsys):
    from diffusers import VQModel

    tiny_vqvae(codes=32, channels=16, latent_channels=4).save_pretrained(str(tmp_path / "vq"))
    data = write_imagefolder(tmp_path / "data", count=6, size=32)
    out = tmp_path / "merged"
    args = ["merge-codes", "--vqvae", str(tmp_path / "vq"), "--data", str(data), "--codes", "4",
            "--out", str(out), "--resolution", "32", "--images", "5"]
    assert main(args) == 0
    assert "-> 4 codes" in capsys.readouterr().out
    assert VQModel.from_pretrained(str(out)).config.num_vq_embeddings == 4
    report = json.loads((out / "merge.json").read_text())
    assert report["images"] == 5 and len(report["mapping"]) == 32 and report["codes_after"] == 4
    before = sorted(p.name for p in out.iterdir())
    assert main(args) == 2  # the existing folder is left alone
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
