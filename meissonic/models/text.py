"""Text conditioning: prompts -> (text states, pooled text) for the transformer (SPEC section 4)."""

from __future__ import annotations

import torch


def max_text_length(tokenizer, text_encoder) -> int:
    """Padded prompt length: 77 for CLIP, or less when the encoder has fewer positions."""
    positions = getattr(text_encoder.config, "max_position_embeddings", 77)
    return min(int(tokenizer.model_max_length), int(positions), 77) if tokenizer.model_max_length else positions


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIPTextModelWithProjection conditioning: the penultimate hidden state (B, L, D_text) and the projected
    EOS embedding (B, D_proj). Prompts are padded to the full length; no attention mask (as released)."""
    device = next(text_encoder.parameters()).device
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_text_length(tokenizer, text_encoder),
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    output = text_encoder(ids, output_hidden_states=True)
    return output.hidden_states[-2], output.text_embeds
