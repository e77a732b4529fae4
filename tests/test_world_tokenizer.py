import numpy as np
import torch
from transformers import CLIPTokenizer

from meissonic.world import caption, sample_scene
from meissonic.world.tokenizer import bpe, world_words, write_world_tokenizer


def test_every_caption_word_is_one_token(tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(write_world_tokenizer(tmp_path))
    for word in world_words():
        assert len(tokenizer(word).input_ids) == 3, word  # start, word, end
    rng = np.random.default_rng(0)
    for _ in range(200):
        text = caption(sample_scene(rng), rng)
        words = text.replace(",", " ,").split()
        assert len(tokenizer(text).input_ids) == len(words) + 2, text


def test_unknown_text_falls_back_to_characters(tmp_path):
    tokenizer = CLIPTokenizer.from_pretrained(write_world_tokenizer(tmp_path))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a zebra!").input_ids)
    assert tokens[1] == "a</w>" and "".join(tokens[2:-1]).replace("</w>", "") == "zebra!"


def test_bpe_reference_behaviour():
    assert bpe("abc", [("a", "b"), ("ab", "c</w>")]) == ["abc</w>"]
    assert bpe("abc", [("b", "c</w>")]) == ["a", "bc</w>"]


def test_embedding_scale_scales_the_one_layer_conditioning_states(tmp_path):
    """With one layer, the penultimate hidden states are the embeddings: `embedding_scale` multiplies them."""
    from meissonic.models.text import encode_prompts
    from meissonic.training.tiny import load_tokenizer, tiny_text_encoder

    tokenizer = load_tokenizer(write_world_tokenizer(tmp_path / "tok"))
    prompts = ["a red square on a white background", "a red square on a black background"]
    settings = dict(hidden_size=32, layers=1, heads=2, projection_dim=16, max_positions=32, seed=0)
    plain, _ = encode_prompts(tokenizer, tiny_text_encoder(tokenizer, **settings), prompts)
    scaled, _ = encode_prompts(tokenizer, tiny_text_encoder(tokenizer, embedding_scale=25.0, **settings), prompts)
    assert torch.allclose(scaled, 25.0 * plain, rtol=1e-4, atol=1e-5)
    differing = torch.nn.functional.cosine_similarity(plain[0], plain[1], dim=-1)
    assert differing[6] < 0.9 and torch.allclose(differing[:6], torch.ones(6))  # "white" vs "black" at word 6
