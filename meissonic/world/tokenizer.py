"""A CLIPTokenizer vocabulary for the world's captions: one token per grammar word, characters otherwise."""

from __future__ import annotations

import json
import string
from pathlib import Path

from meissonic.world.captions import BACKGROUND_PHRASES, FRAMES, JOINS, NUMBER_WORDS, RELATION_PHRASES, SIZE_WORDS
from meissonic.world.scene import BACKGROUNDS, COLOURS, KINDS


def world_words() -> list[str]:
    """Every word the caption grammar can produce, sorted."""
    phrases = [*FRAMES, *JOINS, *BACKGROUND_PHRASES, *NUMBER_WORDS.values(), *BACKGROUNDS, *COLOURS]
    phrases += [p for options in RELATION_PHRASES.values() for p in options]
    phrases += [w for options in SIZE_WORDS.values() for w in options]
    phrases += [*KINDS, *(kind + "s" for kind in KINDS), "a", "an", "one", "background"]
    words = {w for phrase in phrases for w in phrase.replace("{}", " ").replace(",", " ").split()}
    return sorted(words)


def write_world_tokenizer(folder: str | Path) -> Path:
    """Write vocab.json + merges.txt: single characters (so any text is representable) plus BPE merges that
    assemble each grammar word left to right into one token."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + string.punctuation:
        for token in (char, char + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    # Merges are global and ranked, so one word's merges can split another word's pieces. Appending, for each word
    # still in pieces, merges that join its current pieces left to right fixes it without touching words already
    # whole (lower-ranked merges always apply first); repeat until every word is one token.
    for _ in range(10):
        broken = [pieces for word in world_words() if len(pieces := bpe(word, merges)) > 1]
        if not broken:
            break
        for pieces in broken:
            left = pieces[0]
            for right in pieces[1:]:
                if (left, right) not in merges:
                    merges.append((left, right))
                vocab.setdefault(left + right, len(vocab))
                left = left + right
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder


def bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """CLIP's byte-pair encoding of one lowercase word: repeatedly merge the adjacent pair of lowest rank."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    pieces = [*word[:-1], word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:], strict=False))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces
