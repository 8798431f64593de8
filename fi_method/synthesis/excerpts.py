"""Grounding of generated answers (stage C): `<excerpt>` expansion and the excerpt ratio.

The instantiator copies long document passages compressed as
`<excerpt>first words<...>last words</excerpt>`; after decoding each marker is replaced by the
unique document span that starts and ends so. The excerpt ratio (METHOD.md: at least 80% of an
answer must be excerpted) is measured as the share of the answer's characters covered by verbatim
document spans of at least MIN_EXCERPT_WORDS words.
"""

from __future__ import annotations

import re

from fi_method.reasons import RejectReason

EXCERPT_OPEN = "<excerpt>"
EXCERPT_CLOSE = "</excerpt>"
EXCERPT_ELLIPSIS = "<...>"
# Shorter runs ("of the United States") occur anywhere; five words copied in order is an excerpt.
MIN_EXCERPT_WORDS = 5
MIN_EXCERPT_RATIO = 0.80

_MARKER = re.compile(re.escape(EXCERPT_OPEN) + r"(.*?)" + re.escape(EXCERPT_CLOSE), re.DOTALL)
_WORD = re.compile(r"\S+")


class ExcerptError(ValueError):
    """An excerpt marker that cannot be expanded, and why."""

    def __init__(self, reason: RejectReason, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _span(document: str, head: str, tail: str) -> str:
    spans = set()
    start = document.find(head)
    while start != -1:
        end = document.find(tail, start + len(head))
        if end != -1:
            spans.add(document[start : end + len(tail)])
        start = document.find(head, start + 1)
    if not spans:
        raise ExcerptError(RejectReason.EXCERPT_NOT_FOUND, f"{head!r} ... {tail!r}")
    if len(spans) > 1:
        raise ExcerptError(
            RejectReason.EXCERPT_AMBIGUOUS, f"{head!r} ... {tail!r} matches {len(spans)} spans"
        )
    return spans.pop()


def _expand_marker(body: str, document: str) -> str:
    head, ellipsis, tail = body.partition(EXCERPT_ELLIPSIS)
    head, tail = head.strip(), tail.strip()
    if not ellipsis:
        if head and head in document:
            return head
        raise ExcerptError(RejectReason.EXCERPT_NOT_FOUND, repr(head[:80]))
    if not head or not tail or EXCERPT_ELLIPSIS in tail:
        raise ExcerptError(RejectReason.MALFORMED_EXCERPT, repr(body[:80]))
    return _span(document, head, tail)


def expand_excerpts(answer: str, document: str) -> str:
    """Replace every `<excerpt>head<...>tail</excerpt>` (or `<excerpt>verbatim</excerpt>`) in
    `answer` by the document text it stands for. Raises ExcerptError when a marker is unclosed,
    malformed, matches nothing or matches more than one span."""
    expanded = _MARKER.sub(lambda m: _expand_marker(m.group(1), document), answer)
    if EXCERPT_OPEN in expanded or EXCERPT_CLOSE in expanded:
        raise ExcerptError(RejectReason.MALFORMED_EXCERPT, "unbalanced <excerpt> tags")
    return expanded


def _copied(tokens: list[str], source: list[str], min_words: int) -> list[bool]:
    """For each of `tokens`, whether it lies in a run of `min_words` tokens that also occurs, in
    order, in `source`."""
    grams = {tuple(source[i : i + min_words]) for i in range(len(source) - min_words + 1)}
    covered = [False] * len(tokens)
    for i in range(len(tokens) - min_words + 1):
        if tuple(tokens[i : i + min_words]) in grams:
            covered[i : i + min_words] = [True] * min_words
    return covered


def excerpt_ratio(answer: str, document: str, min_words: int = MIN_EXCERPT_WORDS) -> float:
    """Share of the answer's non-space characters inside runs of at least `min_words` words that
    appear, in order and verbatim (up to whitespace), in the document. An answer shorter than
    `min_words` words counts as excerpted only when it is a verbatim part of the document."""
    answer_words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(answer)]
    total = sum(end - start for start, end, _ in answer_words)
    if not total:
        return 0.0
    if len(answer_words) < min_words:
        words = " ".join(w for _, _, w in answer_words)
        return 1.0 if words in " ".join(document.split()) else 0.0
    covered = _copied([w for _, _, w in answer_words], document.split(), min_words)
    return sum(end - start for (start, end, _), hit in zip(answer_words, covered) if hit) / total


def excerpt_spans(
    answer: str, text: str, min_words: int = MIN_EXCERPT_WORDS
) -> list[tuple[int, int]]:
    """(start, end) character spans of `text` that the answer copies: merged runs of text words
    covered by a `min_words`-word sequence that also appears, in order, in the answer. For showing
    where an answer comes from (`fi lineage`)."""
    text_words = list(_WORD.finditer(text))
    covered = _copied([m.group() for m in text_words], answer.split(), min_words)
    spans: list[tuple[int, int]] = []
    for word, hit in zip(text_words, covered, strict=True):
        if not hit:
            continue
        if spans and not text[spans[-1][1] : word.start()].strip():
            spans[-1] = (spans[-1][0], word.end())
        else:
            spans.append((word.start(), word.end()))
    return spans
