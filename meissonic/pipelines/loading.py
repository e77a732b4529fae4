"""Loading checkpoint folders in the released layout (SPEC section 1), safely.

A released `model_index.json` names classes that exist in no installed library (`Transformer2DModel` from module
`transformer` or `src.transformer`, `Scheduler` from `scheduler`). They are mapped to this package's classes; no code
is ever imported from the checkpoint folder, and weights are read from safetensors files only.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..models.transformer import MeissonicTransformer2DModel
from ..sampling.scheduler import MeissonicScheduler

# component -> class names that may stand for it in model_index.json (released and ours)
ACCEPTED_CLASSES = {
    "transformer": {"Transformer2DModel", "MeissonicTransformer2DModel"},
    "scheduler": {"Scheduler", "MeissonicScheduler", "AmusedScheduler"},
    "vqvae": {"VQModel"},
    "text_encoder": {"CLIPTextModelWithProjection"},
    "tokenizer": {"CLIPTokenizer", "CLIPTokenizerFast"},
}
WEIGHT_NAMES = {"transformer": "diffusion_pytorch_model", "vqvae": "diffusion_pytorch_model", "text_encoder": "model"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded: the message names the file or key at fault."""


def read_model_index(folder: Path) -> dict:
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    index = folder / "model_index.json"
    if not index.is_file():
        raise CheckpointError(f"{folder} has no model_index.json: not a pipeline folder")
    try:
        entries = json.loads(index.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{index} is not valid JSON: {error}") from None
    for component, accepted in ACCEPTED_CLASSES.items():
        entry = entries.get(component)
        if not (isinstance(entry, list) and len(entry) == 2):
            raise CheckpointError(f"{index} does not name a '{component}' component")
        if entry[1] not in accepted:
            raise CheckpointError(
                f"{index}: component '{component}' is a {entry[1]}, expected one of {sorted(accepted)}"
            )
    return entries


def weight_files(folder: Path, component: str, variant: str | None) -> list[Path]:
    """The safetensors file(s) of a component (sharded checkpoints through their index), variant first."""
    base = WEIGHT_NAMES[component]
    names = [f"{base}.{variant}.safetensors", f"{base}.safetensors"] if variant else [f"{base}.safetensors"]
    for name in names:
        single = folder / name
        if single.is_file():
            if name != names[0]:
                warnings.warn(f"{folder.name}: no '{variant}' variant, loading {name}", stacklevel=3)
            return [single]
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are missing: {missing}")
            return [folder / s for s in shards]
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); they are refused because unpickling can "
            "run arbitrary code. Convert them to safetensors first."
        )
    raise CheckpointError(f"{folder} has no weights: expected {names[-1]}")


def check_state_dict(files: list[Path], expected: dict[str, tuple[int, ...]], where: Path) -> None:
    """Fail, naming the key, unless the files hold exactly the expected keys with the expected shapes."""
    found: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    found[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as error:  # a truncated or corrupt file
            raise CheckpointError(f"{file} is not a readable safetensors file: {error}") from None
    missing = sorted(set(expected) - set(found))
    unknown = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(f"{where}: missing key '{missing[0]}'" + _more(missing))
    if unknown:
        raise CheckpointError(f"{where}: unknown key '{unknown[0]}'" + _more(unknown))
    for key, shape in expected.items():
        if found[key] != shape:
            raise CheckpointError(
                f"{where}: key '{key}' has shape {list(found[key])}, the config implies {list(shape)}"
            )


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def _read_config(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {name}")
    return json.loads(path.read_text())


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_transformer(folder: Path, torch_dtype: torch.dtype | None, variant: str | None) -> MeissonicTransformer2DModel:
    config = _read_config(folder, "config.json")
    try:
        with torch.device("meta"):
            model = MeissonicTransformer2DModel.from_config(config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: {error}") from None
    files = weight_files(folder, "transformer", variant)
    check_state_dict(files, _shapes(model), folder)
    state = {}
    for file in files:
        state.update(load_file(file))
    dtype = torch_dtype or torch.float32
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def load_vqvae(folder: Path, torch_dtype: torch.dtype | None, variant: str | None):
    from diffusers import VQModel

    config = _read_config(folder, "config.json")
    with torch.device("meta"):
        expected = _shapes(VQModel.from_config(config))
    files = weight_files(folder, "vqvae", variant)
    check_state_dict(files, expected, folder)
    variant = variant if files[0].name.count(".") > 1 else None
    model = VQModel.from_pretrained(folder, torch_dtype=torch_dtype or torch.float32, use_safetensors=True,
                                    variant=variant)
    return model.eval()


def load_text_encoder(folder: Path, torch_dtype: torch.dtype | None, variant: str | None):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig.from_pretrained(folder)
    with torch.device("meta"):
        expected = _shapes(CLIPTextModelWithProjection(config))
    files = weight_files(folder, "text_encoder", variant)
    # Non-persistent buffers are not in the state dict; everything else must match exactly.
    check_state_dict(files, expected, folder)
    variant = variant if files[0].name.count(".") > 1 else None
    model = CLIPTextModelWithProjection.from_pretrained(folder, dtype=torch_dtype or torch.float32,
                                                        use_safetensors=True, variant=variant)
    return model.eval()


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    missing = [name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
    if missing and not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder} is missing {' and '.join(missing)} (or a tokenizer.json)")
    return CLIPTokenizer.from_pretrained(folder)


def load_scheduler(folder: Path) -> MeissonicScheduler:
    config = {k: v for k, v in _read_config(folder, "scheduler_config.json").items() if not k.startswith("_")}
    unknown = set(config) - {"mask_token_id", "masking_schedule"}
    if unknown:
        warnings.warn(f"{folder}: ignoring scheduler settings {sorted(unknown)}", stacklevel=3)
    return MeissonicScheduler(**{k: v for k, v in config.items() if k not in unknown})


def load_components(
    folder: str | Path, torch_dtype: torch.dtype | None = None, variant: str | None = None
) -> tuple[dict, dict]:
    """Load every component of a pipeline folder; returns (components, extra pipeline settings)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per weight file is noise for a pipeline load
    folder = Path(folder).expanduser()
    entries = read_model_index(folder)
    if torch_dtype == torch.float16 and not torch.cuda.is_available():
        warnings.warn("float16 on a CPU is extremely slow; use torch.bfloat16 or torch.float32", stacklevel=3)
    for component in ACCEPTED_CLASSES:
        if not (folder / component).is_dir():
            raise CheckpointError(f"{folder} has no '{component}' folder")
    # Half-precision VQ decoders overflow in float16 (NaNs); bfloat16 has the range of float32.
    vq_dtype = torch.float32 if torch_dtype in (None, torch.float16) else torch_dtype
    components = {
        "transformer": load_transformer(folder / "transformer", torch_dtype, variant),
        "vqvae": load_vqvae(folder / "vqvae", vq_dtype, variant),
        "text_encoder": load_text_encoder(folder / "text_encoder", torch_dtype, variant),
        "tokenizer": load_tokenizer(folder / "tokenizer"),
        "scheduler": load_scheduler(folder / "scheduler"),
    }
    mask_id = components["transformer"].mask_token_id
    if components["scheduler"].config.mask_token_id != mask_id:
        raise CheckpointError(
            f"scheduler mask_token_id {components['scheduler'].config.mask_token_id} differs from the transformer's "
            f"mask id {mask_id} (vocab_size - 1)"
        )
    extras = {k: v for k, v in entries.items() if not k.startswith("_") and k not in ACCEPTED_CLASSES}
    return components, extras


def write_clip_vocabulary(folder: Path) -> None:
    """Add vocab.json + merges.txt (the released tokenizer layout) beside a tokenizer.json that lacks them."""
    tokenizer_json = folder / "tokenizer.json"
    if (folder / "vocab.json").is_file() or not tokenizer_json.is_file():
        return
    model = json.loads(tokenizer_json.read_text())["model"]
    if model.get("type") != "BPE":
        return
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges))
