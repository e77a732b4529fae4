"""Pluggable learned scorers for users with real models on disk: CLIP score and an HPS-style reward.

Both load a transformers `CLIPModel` and its processor from a local folder (safetensors weights only,
no network) and score image-text pairs by cosine similarity of the projected embeddings:

* `ClipScorer`: CLIP score = 100 * max(cos, 0) (the torchmetrics convention);
* `PreferenceScorer`: HPS-style reward = 100 * cos, for a CLIP-architecture model fine-tuned on human
  preferences (HPS v2 numbers such as Meissonic's 28.83 are on this scale).

`load_scorer(name, folder)` picks one by name; `SCORERS` is the registry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


class ClipSimilarityScorer:
    """Image-text cosine similarity with a local CLIP-architecture model."""

    def __init__(self, folder: str | os.PathLike, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP model folder (config.json) at {folder}")
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"no .safetensors weights in {folder} (pickled weights are not loaded)")
        self.device = torch.device(device)
        model = CLIPModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        self.model = model.float().to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def cosine(self, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Cosine similarity of each image with its text, shape (N,)."""
        import torch

        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} texts")
        out = []
        for start in range(0, len(images), batch_size):
            inputs = self.processor(
                text=list(texts[start : start + batch_size]),
                images=[im.convert("RGB") for im in images[start : start + batch_size]],
                return_tensors="pt",
                padding="max_length",
                truncation=True,
                max_length=self.model.config.text_config.max_position_embeddings,
            ).to(self.device)
            with torch.no_grad():
                img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
                txt = self.model.get_text_features(
                    input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
                )
            img = getattr(img, "pooler_output", img)
            txt = getattr(txt, "pooler_output", txt)
            out.append(torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def __call__(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        return self.score(images, texts)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


class ClipScorer(ClipSimilarityScorer):
    """CLIP score: 100 * max(cos, 0) per image-text pair."""

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        return 100.0 * np.maximum(self.cosine(images, texts), 0.0)


class PreferenceScorer(ClipSimilarityScorer):
    """HPS-style reward: 100 * cos per image-text pair, from a preference-tuned CLIP model."""

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        return 100.0 * self.cosine(images, texts)


SCORERS: dict[str, type[ClipSimilarityScorer]] = {"clip": ClipScorer, "hps": PreferenceScorer}


def load_scorer(name: str, folder: str | os.PathLike, device: str = "cpu") -> ClipSimilarityScorer:
    """A scorer from the registry by name ("clip" or "hps"), loaded from `folder`."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose from {sorted(SCORERS)}")
    return SCORERS[name](folder, device=device)
