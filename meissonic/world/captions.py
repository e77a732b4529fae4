"""The caption grammar: paraphrased English descriptions of a `Scene`, and a parser for that grammar.

Grammar (one of each alternative is drawn at random)::

    caption    := frame(body) [background]
    body       := group                               single object or a counted group
                | group join group                    two different objects, no relation stated
                | group relation group                two objects and their spatial relation
    group      := det [size] colour kind | number [size] colour kind "s"
    det        := "a" / "an" | "one";  number := "two" | "three" | "four";  size := "small" | "large" | "big"
    frame(x)   := x | "a picture of" x | "an image of" x | "a drawing of" x | "a simple illustration of" x
    join       := "and" | "with" | "together with"
    relation   := "to the left of" | "left of" | "on the left of" | "to the right of" | "right of" | ...
                | "above" | "over" | "placed above" | "below" | "under" | "beneath"
    background := "on a" bg "background" | "against a" bg "background" | "in front of a" bg "background"
                | "," bg "background"

`parse_caption` reads any sentence of this grammar back into its requirements.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from meissonic.world.scene import BACKGROUNDS, COLOURS, KINDS, ObjectSpec, Relation, Scene, Task

NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small",), "large": ("large", "big")}
FRAMES: tuple[str, ...] = (
    "{}",
    "{}",
    "a picture of {}",
    "an image of {}",
    "a drawing of {}",
    "a simple illustration of {}",
)
JOINS: tuple[str, ...] = ("and", "with", "together with")
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "placed above"),
    "below": ("below", "under", "beneath"),
}
BACKGROUND_PHRASES: tuple[str, ...] = (
    " on a {} background",
    " against a {} background",
    " in front of a {} background",
    ", {} background",
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def article(word: str) -> str:
    """The indefinite article before `word`: "an" before a vowel, else "a"."""
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(
    kind: str, colour: str, count: int, rng: np.random.Generator, size: str | None = None
) -> str:
    """ "a red circle", "one small blue star", "three big green squares"..."""
    words = [colour, kind + ("s" if count > 1 else "")]
    if size is not None:
        words.insert(0, _pick(rng, SIZE_WORDS[size]))
    if count > 1:
        det = NUMBER_WORDS[count]
    elif rng.random() < 0.2:
        det = "one"
    else:
        det = article(words[0])
    return " ".join([det, *words])


def caption(
    scene: Scene,
    rng: np.random.Generator,
    mention_background: bool | None = None,
    mention_size: bool | None = None,
) -> str:
    """A random paraphrase describing `scene` exactly (kinds, colours, counts, its relation if it has one).

    `mention_background` / `mention_size` default to a coin flip (probability 0.5 / 0.25).
    """
    if mention_background is None:
        mention_background = bool(rng.random() < 0.5)
    if mention_size is None:
        mention_size = bool(rng.random() < 0.25)
    groups = scene.groups()
    sizes = []
    for kind, colour, _ in groups:
        group_sizes = {o.size for o in scene.objects if (o.kind, o.colour) == (kind, colour)}
        sizes.append(group_sizes.pop() if mention_size and len(group_sizes) == 1 else None)
    phrases = [object_phrase(k, c, n, rng, s) for (k, c, n), s in zip(groups, sizes, strict=True)]
    if scene.relation is not None:
        rel = scene.relation
        body = f"{phrases[rel.a]} {_pick(rng, RELATION_PHRASES[rel.relation])} {phrases[rel.b]}"
    elif len(phrases) == 2:
        body = f"{phrases[0]} {_pick(rng, JOINS)} {phrases[1]}"
    else:
        body = " and ".join(phrases)
    text = _pick(rng, FRAMES).format(body)
    if mention_background:
        text += _pick(rng, BACKGROUND_PHRASES).format(scene.background)
    return text


def captions(scene: Scene, rng: np.random.Generator, n: int = 4) -> list[str]:
    """`n` distinct-if-possible paraphrases of `scene`."""
    out: list[str] = []
    for _ in range(8 * n):
        text = caption(scene, rng)
        if text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------ parsing

_WORD_TO_COUNT = {"a": 1, "an": 1, "one": 1, **{w: n for n, w in NUMBER_WORDS.items()}}
_SIZE_WORD = {w: s for s, words in SIZE_WORDS.items() for w in words}
# The alternatives of an object phrase's words, for the parser's and the rewrites' patterns.
_OBJECT_WORDS = {
    "dets": "|".join(_WORD_TO_COUNT),
    "sizes": "|".join(_SIZE_WORD),
    "colours": "|".join(COLOURS),
    "kinds": "|".join(KINDS),
}
_OBJECT_RE = re.compile(
    r"\b(?P<det>{dets})\s+(?:(?P<size>{sizes})\s+)?(?P<colour>{colours})\s+(?P<kind>{kinds})s?\b".format(
        **_OBJECT_WORDS
    )
)
_BACKGROUND_RE = re.compile(r"\b(?P<bg>{})\s+background\b".format("|".join(BACKGROUNDS)))
_PHRASE_TO_RELATION = sorted(
    ((p, r) for r, phrases in RELATION_PHRASES.items() for p in phrases), key=lambda x: -len(x[0])
)


def parse_caption(text: str) -> Task:
    """Read a caption of this grammar back into its requirements (groups, relation, background).

    Raises ValueError when the text contains no object phrase of the grammar.
    """
    lowered = text.lower()
    matches = list(_OBJECT_RE.finditer(lowered))
    if not matches:
        raise ValueError(f"no '<number> <colour> <kind>' phrase in {text!r}")
    objects = tuple(ObjectSpec(m["kind"], m["colour"], _WORD_TO_COUNT[m["det"]]) for m in matches)
    relation = None
    if len(matches) == 2:
        between = lowered[matches[0].end() : matches[1].start()].strip()
        for phrase, rel in _PHRASE_TO_RELATION:
            if between == phrase:
                relation = Relation(0, rel, 1)
                break
    background = _BACKGROUND_RE.search(lowered)
    if relation is not None:
        task_type = "position"
    elif len(objects) > 1:
        task_type = "pair"
    else:
        task_type = "count" if objects[0].count > 1 else "single"
    return Task(text, objects, relation, background["bg"] if background else None, task_type)


# ------------------------------------------------------------ restated layouts
# Each relation's restatement: (the phrase it is stated with, whether its objects are swapped).
STATED_RELATIONS: dict[str, tuple[str, bool]] = {
    "left of": ("left of", False),
    "right of": ("left of", True),
    "above": ("placed above", False),
    "below": ("placed above", True),
}
PAIR_LAYOUT = "left of"
UNSTATED_BACKGROUND = "black"
UNSTATED_SIZE_OF_THREE = "large"


def layout_rewrites() -> list[tuple[str, str]]:
    """Regular-expression rewrites (pattern, replacement) of whole captions of this grammar that state their layout
    in the order a model draws best when it places the object named first on the left / top whatever the relation
    word says (the embedded default model does), applied in order:

    * "A right of B" -> "B left of A" and "A below B" -> "B placed above A": the same scene, restated; the
      relations' other phrasings are stated as "left of" and "placed above", the phrases it follows best;
    * "A and B" (or "with", "together with") -> "A left of B": one of the layouts the caption allows, stated;
    * "two A" -> "an A left of an A" and "three A" -> "two A left of an A": counted groups split in two, each
      the same scene in one of the layouts it allows; a group of three whose size is not stated is stated large
      ("two large A left of a large A"), one of the sizes it allows;
    * a caption that states no background gets " on a black background": one of the backgrounds it allows.

    Frame, object phrases (counts and sizes included) and background are kept; other text is left alone.
    """

    def literal(text: str) -> str:
        return re.escape(text).replace("\\ ", " ")  # spaces need no escape: keeps model_index.json readable

    def alternatives(phrases) -> str:
        return "|".join(literal(p) for p in sorted(phrases, key=len, reverse=True))

    words = {name: f"(?:{alts})" for name, alts in _OBJECT_WORDS.items()}
    obj = "{dets} (?:{sizes} )?{colours} {kinds}s?".format(**words)
    frames = alternatives(f.replace("{}", "") for f in FRAMES if f != "{}")
    frame = f"(?P<frame>(?:{frames})?)"
    background = "(?P<background>{})?".format(
        "|".join(
            literal(p).replace(literal("{}"), "(?:{})".format("|".join(BACKGROUNDS))) for p in BACKGROUND_PHRASES
        )
    )

    def rule(body: str, replacement: str) -> tuple[str, str]:
        return rf"(?i)^{frame}{body}{background}$", rf"\g<frame>{replacement}\g<background>"

    def two_objects(between: str) -> str:
        return rf"(?P<a>{obj}) (?:{between}) (?P<b>{obj})"

    rules = [rule(two_objects(alternatives(RELATION_PHRASES[relation])),
                  rf"\g<b> {phrase} \g<a>" if swapped else rf"\g<a> {phrase} \g<b>")
             for relation, (phrase, swapped) in STATED_RELATIONS.items()]
    rules.append(rule(two_objects(alternatives(JOINS)), rf"\g<a> {PAIR_LAYOUT} \g<b>"))
    # Counted groups split in two: "two A" -> "an A left of an A", "three A" -> "two A left of an A", an unsized
    # group of three sized first. The article agrees with the group's first word (size or colour): the "an" rules
    # come first, the "a" rules take the rest.
    unsized_three = f"three (?P<group>{words['colours']} {words['kinds']}s)"
    rules.append(rule(unsized_three, f"three {UNSTATED_SIZE_OF_THREE} \\g<group>"))
    an_starts = [f"{size} {words['colours']}" for size in _SIZE_WORD if article(size) == "an"]
    an_starts += [colour for colour in COLOURS if article(colour) == "an"]
    singles = (("an", "(?:{}) {{kinds}}".format("|".join(an_starts))), ("a", "(?:{sizes} )?{colours} {kinds}"))
    for det, single in singles:
        one = f"{det} \\g<one>"
        for number, first in (("two", one), ("three", "two \\g<one>s")):
            rules.append(rule(f"{number} (?P<one>{single.format(**words)})s", f"{first} {PAIR_LAYOUT} {one}"))
    links = alternatives([*JOINS, *(p for phrases in RELATION_PHRASES.values() for p in phrases)])
    rules.append((rf"(?i)^(?P<caption>(?:{frames})?{obj}(?: (?:{links}) {obj})?)$",
                  rf"\g<caption>{BACKGROUND_PHRASES[0].format(UNSTATED_BACKGROUND)}"))
    return rules


@functools.cache
def _compiled_layout_rewrites() -> list[tuple[re.Pattern, str]]:
    return [(re.compile(pattern), replacement) for pattern, replacement in layout_rewrites()]


def restate(text: str) -> str:
    """`text` restated by `layout_rewrites`, applied in order: what the embedded default model reads for it."""
    for pattern, replacement in _compiled_layout_rewrites():
        text = pattern.sub(replacement, text)
    return text
