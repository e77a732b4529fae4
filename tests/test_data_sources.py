"""Datasets: the four raw formats give the same records; crops are recorded as micro-conditions; corrupt
records
are skipped and counted; the order is a pure function of (seed, position)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from test_train_helpers import shape_records, write_imagefolder

from meissonic.data import EpochOrder, ImageTextDataset, batch_positions, open_source


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def records():
    return shape_records(6, size=32)


def write_parquet(path, records):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "image": [{"bytes": png(i), "path": None} for i, _, _ in records],
            "text": [c for _, c, _ in records],
            "score": [s for _, _, s in records],
        }
    )
    pq.write_table(table, path, row_group_size=2)


def write_tar(path, records):
    with tarfile.open(path, "w") as tar:
        for n, (image, caption, score) in enumerate(records):
            for ext, payload in (
                ("png", png(image)),
                ("txt", caption.encode()),
                ("json", json.dumps({"score": score}).encode()),
            ):
                info = tarfile.TarInfo(f"sample{n:04d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def write_hf(path, records):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict(
        {
            "image": [i for i, _, _ in records],
            "text": [c for _, c, _ in records],
            "score": [s for _, _, s in records],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "text": datasets.Value("string"), "score": datasets.Value("float32")}
        ),
    )
    data.save_to_disk(str(path))


@pytest.mark.parametrize("fmt", ["imagefolder", "sidecar", "parquet", "webdataset", "hf"])
def test_formats_yield_the_same_records(tmp_path, records, fmt):
    if fmt == "imagefolder":
        path = write_imagefolder(tmp_path / "d", count=6, size=32)
    elif fmt == "sidecar":
        path = write_imagefolder(tmp_path / "d", count=6, size=32, sidecar=True)
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        write_parquet(path, records)
    elif fmt == "webdataset":
        (tmp_path / "d").mkdir()
        path = tmp_path / "d" / "shard-000.tar"
        write_tar(path, records)
    else:
        path = tmp_path / "d"
        write_hf(path, records)
    source = open_source(path)
    assert len(source) == 6
    for n, (image, caption, score) in enumerate(records):
        record = source.read(n)
        assert record.caption == caption
        assert record.score == (None if fmt == "sidecar" else pytest.approx(score))
        dataset = ImageTextDataset(source, 32, random_crop=False)
        pixels = dataset.load(n, 0)["pixels"]
        expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(pixels, expected)


def test_crop_and_score_become_micro_conditions(tmp_path):
    path = write_imagefolder(tmp_path / "d", count=4, size=32, wide=True, sidecar=True)  # 48x32 images
    dataset = ImageTextDataset(open_source(path), 32, seed=1, default_score=6.0)
    lefts = set()
    for position in range(40):
        item = dataset[position]
        width, height, top, left, score = item["micro_conds"].tolist()
        assert (width, height, top, score) == (48, 32, 0, 6.0) and 0 <= left <= 16
        assert item["pixels"].shape == (3, 32, 32)
        lefts.add(left)
    assert len(lefts) > 3  # random crops
    torch.testing.assert_close(
        dataset[7]["micro_conds"], dataset[7]["micro_conds"]
    )  # deterministic per position


def test_corrupt_records_are_skipped_and_counted(tmp_path):
    path = write_imagefolder(tmp_path / "d", count=6, size=32)
    (path / "img_0002.png").write_bytes(b"not an image")
    (path / "img_0004.png").write_bytes(b"")
    dataset = ImageTextDataset(open_source(path), 32)
    skipped = sum(dataset[p]["skipped"] for p in range(12))
    assert skipped >= 4  # both bad files, hit in each of two epochs


def test_missing_and_empty_datasets_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable record"):
        open_source(tmp_path / "empty")


def test_order_is_a_permutation_per_epoch_and_batches_partition_the_stream():
    for mode in ("full", "block"):
        order = EpochOrder(10, seed=3, mode=mode, blocks=[4, 4, 2], window=2)
        epoch0 = [order.index(p) for p in range(10)]
        epoch1 = [order.index(p) for p in range(10, 20)]
        assert sorted(epoch0) == sorted(epoch1) == list(range(10)) and epoch0 != epoch1
    one = [p for m in range(2) for p in batch_positions(5, m, 0, 1, 4, 2)]
    two = sorted(p for m in range(2) for r in range(2) for p in batch_positions(5, m, r, 2, 2, 2))
    assert one == two == list(range(40, 48))
