"""Documents split into chunks that fit the embedder. The paper embeds whole documents; long ones
exceed any encoder's window, so we cut them on paragraph, then sentence, then word boundaries.
Matching and packing still work per document: a chunk keeps its document's id and position."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fi_method.text import SENTENCE_END, content_hash

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    position: int
    text: str
    n_tokens: int


def _pieces(
    text: str, count_tokens: Callable[[str], int], max_tokens: int
) -> list[tuple[str, int, bool]]:
    """The text as (piece, tokens, starts a paragraph) units that each fit: paragraphs, else their
    sentences, else runs of words."""
    units: list[tuple[str, int, bool]] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        tokens = count_tokens(paragraph)
        if tokens <= max_tokens:
            units.append((paragraph, tokens, True))
            continue
        parts: list[tuple[str, int]] = []
        for sentence in SENTENCE_END.split(paragraph):
            tokens = count_tokens(sentence)
            if tokens <= max_tokens:
                parts.append((sentence, tokens))
            else:
                parts.extend(_word_runs(sentence, count_tokens, max_tokens))
        units.extend((part, tokens, index == 0) for index, (part, tokens) in enumerate(parts))
    return units


def _word_runs(
    sentence: str, count_tokens: Callable[[str], int], max_tokens: int
) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    current: list[str] = []
    for word in sentence.split():
        candidate = " ".join([*current, word])
        if current and count_tokens(candidate) > max_tokens:
            text = " ".join(current)
            runs.append((text, count_tokens(text)))
            current = [word]
        else:
            current.append(word)
    if current:
        text = " ".join(current)
        runs.append((text, count_tokens(text)))
    return runs


def chunk_document(
    doc_id: str, text: str, count_tokens: Callable[[str], int], max_tokens: int
) -> list[Chunk]:
    """Greedily pack consecutive paragraphs (or sentences, or word runs) into chunks of at most
    `max_tokens` tokens as counted by `count_tokens` (the embedder's own tokenizer, without special
    tokens). A short document is one chunk. `chunk_id` hashes the document id and the chunk text."""
    groups: list[str] = []
    current = ""
    current_tokens = 0
    # Pieces' token counts add up (subword tokenizers give a paragraph break no token of its own),
    # so packing needs no re-tokenizing; each chunk is counted exactly once at the end.
    for piece, tokens, starts_paragraph in _pieces(text, count_tokens, max_tokens):
        if current and current_tokens + tokens > max_tokens:
            groups.append(current)
            current, current_tokens = "", 0
        joiner = ("\n\n" if starts_paragraph else " ") if current else ""
        current += joiner + piece
        current_tokens += tokens
    if current:
        groups.append(current)
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
