"""Record sources: random access to (image bytes, caption, score) records in the supported on-disk formats.

Every source is indexable without loading the data into memory (image folders list files, Parquet is read one
row group at a time, WebDataset shards are indexed by tar header offsets, `datasets` folders are
memory-mapped),
so data larger than memory streams through. `blocks` gives the sizes of contiguous storage units (row groups,
shards) for locality-preserving shuffles.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_KEYS = ("text", "caption", "prompt")


@dataclass
class Record:
    """One training example before decoding: encoded image bytes, its caption and optional quality score."""

    image: bytes
    caption: str
    score: float | None
    key: str


class Source:
    """Random access to records. Subclasses set `blocks` and implement `__len__` and `read`."""

    blocks: list[int]

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> Record:
        raise NotImplementedError


def _caption_of(row: dict, column: str) -> str:
    for key in (column, *CAPTION_KEYS):
        value = row.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and isinstance(value[0], str):
            return value[0]
    return ""


def _score_of(row: dict, column: str) -> float | None:
    value = row.get(column)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class ImageFolderSource(Source):
    """Images under a folder (recursive) with captions from `metadata.jsonl` (Hugging Face imagefolder: a
    `file_name` column relative to the jsonl's folder) or from sidecar `.txt` files of the same stem."""

    def __init__(self, root: str | Path, caption_column: str = "text", score_column: str = "score"):
        root = Path(root)
        metadata: dict[Path, dict] = {}
        for jsonl in sorted(root.rglob("metadata.jsonl")):
            for line in jsonl.read_text().splitlines():
                if line.strip():
                    try:
                        row = json.loads(line)
                        metadata[(jsonl.parent / row["file_name"]).resolve()] = row
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a bad metadata line is like a missing caption
        self.files = sorted(
            p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        self.metadata = metadata
        self.caption_column, self.score_column = caption_column, score_column
        self.blocks = [len(self.files)]

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> Record:
        path = self.files[index]
        row = self.metadata.get(path.resolve())
        if row is not None:
            caption, score = _caption_of(row, self.caption_column), _score_of(row, self.score_column)
        else:
            sidecar = path.with_suffix(".txt")
            caption, score = (sidecar.read_text().strip() if sidecar.is_file() else ""), None
        return Record(path.read_bytes(), caption, score, str(path))


def _image_bytes(value) -> bytes:
    """Image cell of Parquet / `datasets` rows: raw bytes or the `datasets` Image struct {bytes, path}."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    if hasattr(value, "save"):  # a decoded PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"unsupported image cell of type {type(value).__name__}")


class ParquetSource(Source):
    """Parquet files (one file or a folder of them): an image column (bytes or {bytes, path}), a caption
    column and an optional score column. Read one row group at a time, the last one cached."""

    def __init__(
        self,
        root: str | Path,
        image_column: str = "image",
        caption_column: str = "text",
        score_column: str = "score",
    ):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading Parquet needs pyarrow: pip install 'meissonic[train]'") from None
        root = Path(root)
        self.files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
        self.image_column, self.caption_column, self.score_column = image_column, caption_column, score_column
        self.groups: list[tuple[int, int]] = []  # (file, row group)
        self.blocks = []
        for f, path in enumerate(self.files):
            file = pq.ParquetFile(path)
            meta, names = file.metadata, set(file.schema_arrow.names)
            if image_column not in names:
                raise ValueError(f"{path}: no image column {image_column!r} (columns: {sorted(names)})")
            for g in range(meta.num_row_groups):
                self.groups.append((f, g))
                self.blocks.append(meta.row_group(g).num_rows)
        self._starts = [0]
        for size in self.blocks:
            self._starts.append(self._starts[-1] + size)
        self._cache: tuple[int, list[dict]] | None = None

    def __len__(self) -> int:
        return self._starts[-1]

    def _group(self, g: int) -> list[dict]:
        if self._cache is None or self._cache[0] != g:
            import pyarrow.parquet as pq

            f, group = self.groups[g]
            file = pq.ParquetFile(self.files[f])
            names = set(file.schema_arrow.names)
            columns = [
                c
                for c in (self.image_column, self.caption_column, *CAPTION_KEYS, self.score_column)
                if c in names
            ]
            self._cache = (g, file.read_row_group(group, columns=list(dict.fromkeys(columns))).to_pylist())
        return self._cache[1]

    def read(self, index: int) -> Record:
        import bisect

        g = bisect.bisect_right(self._starts, index) - 1
        row = self._group(g)[index - self._starts[g]]
        return Record(
            _image_bytes(row[self.image_column]),
            _caption_of(row, self.caption_column),
            _score_of(row, self.score_column),
            f"{self.files[self.groups[g][0]]}:{index}",
        )


class WebDatasetSource(Source):
    """WebDataset tar shards: members grouped by key (path up to the first dot of the file name); an image
    member (jpg/png/webp), a caption (`.txt`/`.caption`) and optionally `.json` with caption/score fields."""

    def __init__(self, root: str | Path, caption_column: str = "text", score_column: str = "score"):
        root = Path(root)
        self.shards = [root] if root.is_file() else sorted(root.rglob("*.tar"))
        self.caption_column, self.score_column = caption_column, score_column
        self.samples: list[
            tuple[int, str, dict[str, tuple[int, int]]]
        ] = []  # (shard, key, ext -> (offset, size))
        self.blocks = []
        for s, shard in enumerate(self.shards):
            groups: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(shard) as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        directory, _, name = member.name.rpartition("/")
                        stem, dot, ext = name.partition(".")
                        if dot:
                            key = f"{directory}/{stem}" if directory else stem
                            groups.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
            except (tarfile.TarError, OSError):
                pass  # an unreadable shard contributes what was indexed before the damage
            count = 0
            for key, members in groups.items():
                if any(ext in members for ext in ("jpg", "jpeg", "png", "webp")):
                    self.samples.append((s, key, members))
                    count += 1
            self.blocks.append(count)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> Record:
        shard, key, members = self.samples[index]
        with open(self.shards[shard], "rb") as f:

            def member(ext: str) -> bytes:
                offset, size = members[ext]
                f.seek(offset)
                return f.read(size)

            image = member(next(e for e in ("jpg", "jpeg", "png", "webp") if e in members))
            meta = json.loads(member("json")) if "json" in members else {}
            caption = next(
                (member(e).decode("utf-8").strip() for e in ("txt", "caption") if e in members),
                _caption_of(meta, self.caption_column),
            )
        return Record(image, caption, _score_of(meta, self.score_column), f"{self.shards[shard]}:{key}")


class HFDatasetSource(Source):
    """A Hugging Face `datasets` dataset saved with `save_to_disk` (memory-mapped Arrow)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_column: str = "image",
        caption_column: str = "text",
        score_column: str = "score",
    ):
        try:
            import datasets
        except ImportError:
            raise ValueError("reading a `datasets` folder needs `pip install datasets`") from None
        data = datasets.load_from_disk(str(root))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"{root}: no split {split!r} (splits: {list(data)})")
            data = data[split]
        if image_column not in data.column_names:
            raise ValueError(f"{root}: no image column {image_column!r} (columns: {data.column_names})")
        if isinstance(data.features[image_column], datasets.Image):
            data = data.cast_column(image_column, datasets.Image(decode=False))
        self.data = data
        self.image_column, self.caption_column, self.score_column = image_column, caption_column, score_column
        self.blocks = [len(data)]

    def __len__(self) -> int:
        return len(self.data)

    def read(self, index: int) -> Record:
        row = self.data[int(index)]
        return Record(
            _image_bytes(row[self.image_column]),
            _caption_of(row, self.caption_column),
            _score_of(row, self.score_column),
            f"row {index}",
        )


def detect_format(path: Path) -> str:
    """Guess the format of a dataset path: preencoded, hf, parquet, webdataset or imagefolder."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return "parquet"
        if suffix == ".tar":
            return "webdataset"
        raise ValueError(f"{path}: cannot tell the dataset format of a {suffix or 'suffix-less'} file")
    if (path / "preencoded.json").is_file():
        return "preencoded"
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return "hf"
    if next(path.rglob("*.parquet"), None) is not None:
        return "parquet"
    if next(path.rglob("*.tar"), None) is not None:
        return "webdataset"
    return "imagefolder"


def open_source(
    path: str | Path,
    format: str = "auto",
    image_column: str = "image",
    caption_column: str = "text",
    score_column: str = "score",
    split: str = "train",
) -> Source:
    """Open a raw (image) dataset. Raises FileNotFoundError for a missing path, ValueError for no records."""
    path = Path(path)
    if not str(path) or not path.exists():
        raise FileNotFoundError(f"dataset path {str(path)!r} does not exist")
    format = detect_format(path) if format == "auto" else format
    if format == "imagefolder":
        source: Source = ImageFolderSource(path, caption_column, score_column)
    elif format == "parquet":
        source = ParquetSource(path, image_column, caption_column, score_column)
    elif format == "webdataset":
        source = WebDatasetSource(path, caption_column, score_column)
    elif format == "hf":
        source = HFDatasetSource(path, split, image_column, caption_column, score_column)
    elif format == "preencoded":
        raise ValueError(f"{path} holds preencoded shards, not images")
    else:
        raise ValueError(f"unknown dataset format {format!r}")
    if len(source) == 0:
        raise ValueError(f"dataset {path} ({format}) holds no usable record")
    return source
