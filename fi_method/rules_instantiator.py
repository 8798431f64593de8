"""The instantiator role without a language model (the `rules` engine): each `<fi>` slot is filled
with the span of the matched chunk whose kind and text are most similar to the slot description,
and the answer is the run of the chunk's sentences most similar to the filled instruction. It
writes the released instantiator's output format (JSON, long copies as `<excerpt>` markers, or
`null`), so every pair goes through the same parser and grounding checks as a model's."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np

from fi_method.excerpts import EXCERPT_CLOSE, EXCERPT_ELLIPSIS, EXCERPT_OPEN
from fi_method.rules_genericizer import slot_fillers
from fi_method.templates import fill_slots, slot_descriptions
from fi_method.text import sentence_spans, words

# Part of every cache key: change it whenever the rules below change.
RULES_VERSION = "rules-1"
MAX_ANSWER_SENTENCES = 4
# An answer is at least a few full sentences' worth of words, and no essay.
MIN_ANSWER_WORDS = 25
MAX_ANSWER_WORDS = 180
# Copies longer than this are written as <excerpt>head<...>tail</excerpt>, as the released
# instantiator does; the marker's head and tail are this many words each.
EXCERPT_MARKER_MIN_WORDS = 30
EXCERPT_MARKER_EDGE_WORDS = 6
# A window that mentions the instruction's filled values is preferred by this much per value
# share, on top of its cosine similarity to the instruction.
VALUE_MENTION_BONUS = 0.1
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

Embed = Callable[[list[str]], np.ndarray]


def memoized(embed: Embed) -> Embed:
    """`embed` that computes each distinct text once: the templates matched to one chunk share
    its fillers and passages."""
    vectors: dict[str, np.ndarray] = {}

    def cached(texts: list[str]) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if text not in vectors]
        if missing:
            vectors.update(zip(missing, embed(missing), strict=True))
        return np.stack([vectors[text] for text in texts])

    return cached


def _assign(descriptions: list[str], fillers: list[tuple[str, str]], embed: Embed) -> dict:
    """One distinct filler per distinct description, best similarity first (greedy)."""
    vectors = embed(descriptions + [f"{surface} ({kind})" for surface, kind in fillers])
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


def _windows(chunk: str) -> list[tuple[int, int]]:
    spans = sentence_spans(chunk)
    windows = []
    for first in range(len(spans)):
        for last in range(first, min(first + MAX_ANSWER_SENTENCES, len(spans))):
            n_words = len(chunk[spans[first][0] : spans[last][1]].split())
            if n_words > MAX_ANSWER_WORDS:
                break
            if n_words >= MIN_ANSWER_WORDS:
                windows.append((spans[first][0], spans[last][1]))
    return windows


def _as_excerpt(passage: str) -> str:
    tokens = list(re.finditer(r"\S+", passage))
    if len(tokens) < EXCERPT_MARKER_MIN_WORDS:
        return passage
    # Head and tail are copied character for character: the span they mark must be found.
    head = passage[: tokens[EXCERPT_MARKER_EDGE_WORDS - 1].end()]
    tail = passage[tokens[-EXCERPT_MARKER_EDGE_WORDS].start() :]
    return f"{EXCERPT_OPEN}{head}{EXCERPT_ELLIPSIS}{tail}{EXCERPT_CLOSE}"


def rules_instantiate(template: str, chunk: str, embed: Embed) -> str:
    """The instantiator output for `template` and the matched `chunk` of a document: JSON
    `{"instruction", "answer"}`, or `null` when the template has no slot, the chunk offers fewer
    fillers than the template has distinct slots, or no passage long enough to answer. `embed` maps texts to unit vectors.
    Deterministic."""
    descriptions = list(dict.fromkeys(slot_descriptions(template)))
    fillers = slot_fillers(chunk)
    windows = _windows(chunk)
    if not descriptions or len(fillers) < len(descriptions) or not windows:
        return "null"
    value_of = _assign(descriptions, fillers, embed)
    instruction = fill_slots(template, value_of)
    passages = [chunk[start:end] for start, end in windows]
    vectors = embed([instruction, *passages])
    scores = vectors[1:] @ vectors[0]
    values = [value.lower() for value in value_of.values()]
    for index, passage in enumerate(passages):
        mentioned = sum(value in passage.lower() for value in values) / len(values)
        scores[index] += VALUE_MENTION_BONUS * mentioned
    answer = _as_excerpt(passages[int(np.argmax(scores))])
    opener = words(instruction)[:1]
    if not opener or opener[0] not in _QUESTION_OPENERS:
        # A request ("Write ...", "List ...") is answered by the passage, introduced as such.
        answer = f"{REQUEST_LEAD}\n\n{answer}"
    return json.dumps({"instruction": instruction, "answer": answer}, ensure_ascii=False)
