import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference folder {REFERENCE} not found")
    return REFERENCE


@pytest.fixture(scope="session")
def is_embedded_model():
    """Whether a loaded pipeline is the package's embedded default model (its transformer config, key by key)."""
    import json

    from meissonic.interfaces.commands.common import default_model_folder

    expected = json.loads((default_model_folder() / "transformer" / "config.json").read_text())

    def check(pipe) -> bool:
        config = pipe.transformer.config
        return all(config.get(k) == v for k, v in expected.items() if not k.startswith("_"))

    return check


@pytest.fixture(scope="session")
def embedded_pipe():
    """The package's embedded default model in bf16, loaded once per test session (tests must not change it)."""
    import torch

    from meissonic import MeissonicPipeline
    from meissonic.interfaces.commands.common import default_model_folder

    pipe = MeissonicPipeline.from_pretrained(default_model_folder(), torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe
