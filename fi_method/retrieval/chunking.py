"""Documents split into chunks that fit the embedder. The paper embeds whole documents; long ones
exceed any encoder's window, so we cut them on paragraph, then sentence, then word boundaries.
Matching and packing still work per document: a chunk keeps its document's id and position."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fi_method.text import content_hash, sentence_spans

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# document_chunks' code version: change it whenever chunk_document's chunks change.
# tests/goldens/chunking.json holds them for real articles; tests/test_goldens.py fails when
# they change while this does not.
CHUNKING_VERSION = "2"


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    position: int
    text: str
    n_tokens: int


Span = tuple[int, int]


def _pieces(
    text: str, count_tokens: Callable[[str], int], max_tokens: int
) -> list[tuple[Span, int]]:
    """The text as ((start, end), tokens) units that each fit: paragraphs,
    else their sentences, else runs of words. Offsets index `text`, so a chunk cut from the first
    unit's start to the last one's end is verbatim text of the document, whatever whitespace
    separated its sentences (excerpts of answers are located in the document by that text)."""
    units: list[tuple[Span, int]] = []
    for paragraph in re.finditer(r"\S(?:.*?\S)??(?=\s*\n\s*\n|\s*$)", text, re.DOTALL):
        tokens = count_tokens(paragraph.group())
        if tokens <= max_tokens:
            units.append((paragraph.span(), tokens))
            continue
        parts: list[tuple[Span, int]] = []
        offset = paragraph.start()
        for start, end in sentence_spans(paragraph.group()):
            sentence = (offset + start, offset + end)
            tokens = count_tokens(text[sentence[0] : sentence[1]])
            if tokens <= max_tokens:
                parts.append((sentence, tokens))
            else:
                parts.extend(_word_runs(text, sentence, count_tokens, max_tokens))
        units.extend(parts)
    return units


def _word_runs(
    text: str, sentence: Span, count_tokens: Callable[[str], int], max_tokens: int
) -> list[tuple[Span, int]]:
    runs: list[tuple[Span, int]] = []
    current: Span | None = None
    for word in re.finditer(r"\S+", text[sentence[0] : sentence[1]]):
        word_span = (sentence[0] + word.start(), sentence[0] + word.end())
        if current and count_tokens(text[current[0] : word_span[1]]) > max_tokens:
            runs.append((current, count_tokens(text[current[0] : current[1]])))
            current = word_span
        else:
            current = (current[0], word_span[1]) if current else word_span
    if current:
        runs.append((current, count_tokens(text[current[0] : current[1]])))
    return runs


def chunk_document(
    doc_id: str, text: str, count_tokens: Callable[[str], int], max_tokens: int
) -> list[Chunk]:
    """Greedily pack consecutive paragraphs (or sentences, or word runs) into chunks of at most
    `max_tokens` tokens as counted by `count_tokens` (the embedder's own tokenizer, without special
    tokens). A short document is one chunk. `chunk_id` hashes the document id and the chunk text."""
    groups: list[str] = []
    current: Span | None = None
    current_tokens = 0
    # Pieces' token counts add up (subword tokenizers give a paragraph break no token of its own),
    # so packing needs no re-tokenizing; each chunk is counted exactly once at the end.
    for span, tokens in _pieces(text, count_tokens, max_tokens):
        if current and current_tokens + tokens > max_tokens:
            groups.append(text[current[0] : current[1]])
            current, current_tokens = None, 0
        current = (current[0], span[1]) if current else span
        current_tokens += tokens
    if current:
        groups.append(text[current[0] : current[1]])
    chunks: list[Chunk] = []
    for group in groups:
        n_tokens = count_tokens(group)
        # Rare: the joined text tokenizes longer than its parts; then it is split on paragraphs.
        parts = [(group, n_tokens)]
        if n_tokens > max_tokens and "\n\n" in group:
            parts = [(part, count_tokens(part)) for part in group.split("\n\n")]
        for part, part_tokens in parts:
            chunks.append(Chunk(content_hash(doc_id, part), len(chunks), part, part_tokens))
    return chunks
