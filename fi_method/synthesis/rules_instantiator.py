"""The instantiator role without a language model (the `rules` engine), shaped like the released
instantiator's output: a long verbatim excerpt of the matched passage answers the template, and
the template's slots are filled with spans of that same excerpt, so the instruction is about its
answer. It writes the released instantiator's format (JSON, long copies as `<excerpt>` markers, or
`null`), so every pair goes through the same parser and grounding checks as a model's.

The rule, for one template and one passage (a chunk of a document, fi_method.retrieval.chunking):
1. The answer is anchored where the template matched: the passage vector that retrieved it is
   Gaussian-pooled around k/(K+1) of the passage (the global vector, k = 0, at its start), and the
   paper finds the answer excerpt where that vector points (Pearson 0.99 between the two).
2. The answer is the run of consecutive sentences from the anchor's, grown forward then back
   through the document until it holds ANSWER_TARGET_WORDS words: an excerpt of a few
   paragraphs, as the released instantiator copies.
3. Each distinct slot description gets the filler of that excerpt
   (fi_method.templating.rules_genericizer's spans: names, dates, noun phrases, typed in the
   vocabulary slots are described in) whose kind is most similar to the description.
4. When that excerpt offers fewer fillers than the template has distinct slots, the whole passage
   is tried; failing that the template does not fit and the output is `null`, as the released
   instantiator answers when a template does not fit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from fi_method.synthesis.excerpts import EXCERPT_CLOSE, EXCERPT_ELLIPSIS, EXCERPT_OPEN
from fi_method.templating.rules_genericizer import slot_fillers
from fi_method.templating.templates import fill_slots, slot_descriptions
from fi_method.text import sentence_spans, words

# Part of every cache key: change it whenever the rules below change.
RULES_VERSION = "rules-3"
# The released instantiator's answers are mostly long copies of the document, several paragraphs
# of it; this is longer than a MiniLM passage (~190 words), so an excerpt may run on into the
# document around its passage, as the released model, which reads the whole document, copies.
ANSWER_TARGET_WORDS = 250
# Below this an excerpt is a sentence or two: too thin to answer, so the template does not fit.
MIN_ANSWER_WORDS = 25
# Copies longer than this are written as <excerpt>head<...>tail</excerpt>, as the released
# instantiator does; the marker's head and tail are this many words each.
EXCERPT_MARKER_MIN_WORDS = 30
EXCERPT_MARKER_EDGE_WORDS = 6
_QUESTION_OPENERS = frozenset(
    {
        "what",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "which",
        "is",
        "are",
        "does",
        "do",
        "did",
        "can",
        "could",
        "should",
        "was",
        "were",
    }
)
REQUEST_LEAD = "Here is what the source says:"
# Longer spans are clauses, not the entity or concept a slot stands for.
MAX_FILLER_WORDS = 6
_MARKUP = re.compile(r"==|\||\[\[|\]\]|\{\{|^File:|\.(?:jpe?g|png|svg|gif)$", re.IGNORECASE)

Embed = Callable[[list[str]], np.ndarray]


class MemoizedEmbed:
    """`embed` that computes each distinct text once: the templates matched to one passage share
    its sentences and fillers. `prefetch` embeds many texts in one batched call."""

    def __init__(self, embed: Embed):
        self._embed = embed
        self._vectors: dict[str, np.ndarray] = {}

    def prefetch(self, texts: list[str]) -> None:
        missing = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self._embed(missing), strict=True))

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.prefetch(texts)
        return np.stack([self._vectors[text] for text in texts])


def _filler_texts(fillers: list[tuple[str, str]]) -> list[str]:
    """What a filler is compared with a slot description by: its kind ("a year", "a person"),
    the vocabulary the rules genericizer describes slots in. Kinds are few, so their vectors are
    shared across a whole batch; ties go to the filler that comes first in the excerpt."""
    return [kind for _, kind in fillers]


def usable_filler(surface: str) -> bool:
    """A filler that reads as a value in an instruction: one line of a few words, not markup
    (section headings, list runs and file names are spans of a parse, not values)."""
    return (
        "\n" not in surface
        and len(surface.split()) <= MAX_FILLER_WORDS
        and not _MARKUP.search(surface)
    )


def _assign(descriptions: list[str], fillers: list[tuple[str, str]], embed: Embed) -> dict:
    """One distinct filler per distinct description, best similarity first (greedy)."""
    vectors = embed(descriptions + _filler_texts(fillers))
    similarity = vectors[: len(descriptions)] @ vectors[len(descriptions) :].T
    value_of: dict[str, str] = {}
    used: set[int] = set()
    for flat in np.argsort(-similarity, axis=None, kind="stable"):
        row, column = divmod(int(flat), len(fillers))
        if descriptions[row] in value_of or column in used:
            continue
        value_of[descriptions[row]] = fillers[column][0]
        used.add(column)
        if len(value_of) == len(descriptions):
            break
    return value_of


def _excerpt_around(
    spans: tuple[tuple[int, int], ...], counts: tuple[int, ...], anchor: int
) -> tuple[int, int]:
    """The character span of the excerpt grown from sentence `anchor` (`counts`: words per
    sentence): forward while under ANSWER_TARGET_WORDS (what follows a sentence usually explains
    it), then back."""
    first = last = anchor
    total = counts[anchor]
    while total < ANSWER_TARGET_WORDS and last + 1 < len(spans):
        last += 1
        total += counts[last]
    while total < ANSWER_TARGET_WORDS and first > 0:
        first -= 1
        total += counts[first]
    return spans[first][0], spans[last][1]


def _as_excerpt(passage: str) -> str:
    tokens = list(re.finditer(r"\S+", passage))
    if len(tokens) < EXCERPT_MARKER_MIN_WORDS:
        return passage
    # Head and tail are copied character for character: the span they mark must be found.
    head = passage[: tokens[EXCERPT_MARKER_EDGE_WORDS - 1].end()]
    tail = passage[tokens[-EXCERPT_MARKER_EDGE_WORDS].start() :]
    return f"{EXCERPT_OPEN}{head}{EXCERPT_ELLIPSIS}{tail}{EXCERPT_CLOSE}"


@lru_cache(maxsize=64)
def _sentences(text: str) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Sentence spans of a text and their word counts, computed once: the templates matched to a
    document share them."""
    spans = tuple(sentence_spans(text))
    return spans, tuple(len(text[start:end].split()) for start, end in spans)


Excerpt = tuple[str, int, int]  # a text and the character span of the excerpt in it


def _excerpts(document: str, chunk: str, anchor: float) -> list[Excerpt]:
    """Candidate answers: the excerpt grown from the sentence at `anchor` (a fraction of the
    passage `chunk`) through the `document` around it, then the passage alone when that differs
    (its own fillers may fit where the excerpt's do not)."""
    if len(chunk.split()) < MIN_ANSWER_WORDS or not sentence_spans(chunk):
        return []
    offset = document.find(chunk)
    text, offset = (document, offset) if offset >= 0 else (chunk, 0)
    spans, counts = _sentences(text)
    at = offset + anchor * len(chunk)
    sentence = next((i for i, (_, end) in enumerate(spans) if end > at), len(spans) - 1)
    around = (text, *_excerpt_around(spans, counts, sentence))
    passage_start = offset + len(chunk) - len(chunk.lstrip())
    passage = (text, passage_start, offset + len(chunk.rstrip()))
    return [around] if around[1:] == passage[1:] else [around, passage]


def rules_instantiate(
    template: str, chunk: str, embed: Embed, anchor: float = 0.0, document: str | None = None
) -> str:
    """The instantiator output for `template` and the matched passage `chunk` of `document` (by
    default the passage is all there is; see the module docstring): JSON `{"instruction",
    "answer"}`, or `null` when the template has no slot, the passage is too short to answer, or
    no excerpt offers a filler for every slot. `anchor` is where in the passage (0..1) the
    template matched, `embed` maps texts to unit vectors. Deterministic."""
    descriptions = list(dict.fromkeys(slot_descriptions(template)))
    if not descriptions:
        return "null"
    for text, start, end in _excerpts(document or chunk, chunk, anchor):
        excerpt = text[start:end]
        fillers = [filler for filler in slot_fillers(text, start, end) if usable_filler(filler[0])]
        if len(excerpt.split()) < MIN_ANSWER_WORDS or len(fillers) < len(descriptions):
            continue
        instruction = fill_slots(template, _assign(descriptions, fillers, embed))
        answer = _as_excerpt(excerpt)
        opener = words(instruction)[:1]
        if not opener or opener[0] not in _QUESTION_OPENERS:
            # A request ("Write ...", "List ...") is answered by the passage, introduced as such.
            answer = f"{REQUEST_LEAD}\n\n{answer}"
        return json.dumps({"instruction": instruction, "answer": answer}, ensure_ascii=False)
    return "null"


def rules_instantiate_all(items: list[tuple[str, str, float, str]], embed: Embed) -> list[str]:
    """`rules_instantiate` of many (template, chunk, anchor, document) items, with every slot
    description and filler kind embedded in one batched call rather than one small call each."""
    cached = MemoizedEmbed(embed)
    texts = []
    for template, chunk, anchor, document in items:
        texts += slot_descriptions(template)
        for excerpt in _excerpts(document, chunk, anchor):
            texts += [kind for surface, kind in slot_fillers(*excerpt) if usable_filler(surface)]
    cached.prefetch(texts)
    return [rules_instantiate(template, chunk, cached, *rest) for template, chunk, *rest in items]
