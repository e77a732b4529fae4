import numpy as np
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
