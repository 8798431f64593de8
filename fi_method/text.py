"""Text cleaning and content-hash ids shared by every stage."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import cache

import ftfy
import Stemmer

_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)
_DIGIT = re.compile(r"\d")
# A sentence ends at . ! or ? followed by space and a capital, digit or opening quote/bracket.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“(\[]?[A-Z0-9])")

# Ids are the first 16 hex digits of a SHA-256: 64 bits keep collisions negligible below ~10^9 rows.
ID_HEX_DIGITS = 16


def clean_text(text: str) -> str:
    """Repair mis-decoded text (mojibake), normalise to NFC, drop control characters and collapse
    runs of spaces; paragraph breaks survive as at most one blank line."""
    text = ftfy.fix_text(text, normalization="NFC")
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits and inner apostrophes)."""
    return [w.lower() for w in _WORD.findall(text)]


@cache
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def word_keys(tokens: list[str]) -> list[str]:
    """What each lower-cased word token matches by: its Snowball stem ("floors" and "floor" are
    one, "currency" and "currently" two), a token with a digit whole."""
    stems = _stemmer().stemWords(tokens)
    return [
        token if _DIGIT.search(token) else stem for token, stem in zip(tokens, stems, strict=True)
    ]


def content_hash(*parts: str) -> str:
    """Stable id of a piece of content: the same text always gets the same id."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()[:ID_HEX_DIGITS]


def fold_for_matching(text: str) -> str:
    """Lower-case, strip accents and punctuation: the form in which two texts count as the same."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(words(stripped))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each sentence, in order; paragraph breaks end sentences
    too. Offsets index `text` itself, so `text[start:end]` is a verbatim piece of it."""
    spans: list[tuple[int, int]] = []
    for paragraph in re.finditer(r"[^\n]+(?:\n(?!\s*\n)[^\n]+)*", text):
        start = paragraph.start()
        for boundary in SENTENCE_END.finditer(paragraph.group()):
            spans.append((start, paragraph.start() + boundary.start()))
            start = paragraph.start() + boundary.end()
        spans.append((start, paragraph.end()))
    return [(a, b) for a, b in spans if text[a:b].strip()]
