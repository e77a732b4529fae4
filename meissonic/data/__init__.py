"""Training data: record sources (image folder, Parquet, WebDataset, `datasets`), transforms, deterministic
order and preencoded shards."""

from .dataset import ImageTextDataset, PreencodedDataset, first_usable
from .order import EpochOrder, PositionBatches, batch_positions
from .shards import INDEX_FILE, PreencodedSource, ShardWriter, concatenate
from .sources import Record, Source, detect_format, open_source
from .transforms import decode_image, resize_and_crop

__all__ = [
    "INDEX_FILE",
    "EpochOrder",
    "ImageTextDataset",
    "PositionBatches",
    "PreencodedDataset",
    "PreencodedSource",
    "Record",
    "ShardWriter",
    "Source",
    "batch_positions",
    "concatenate",
    "first_usable",
    "decode_image",
    "detect_format",
    "open_source",
    "resize_and_crop",
]
