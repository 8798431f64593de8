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
# ... except after an abbreviation (`abbreviations`), initials or a dotted acronym ("J.", "U.S.")
# on the same line (a caption line "the lowercase letter A." still ends).
# A sentence that truly ends on one ("moved to the U.S. He ...") runs on into the next: rarer than
# a name or a country cut in two.
_INITIALS = re.compile(r"(?:[A-Z]\.)+")
ABBREVIATION_TAIL_CHARS = 32
_OPENING_PUNCTUATION = "\"'“‘([{"

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


@cache
def abbreviations() -> frozenset[str]:
    """The abbreviations spaCy's English tokenizer keeps whole ("Dr.", "e.g.", "Calif.", "a.m.").
    Loaded on first use: spaCy's language data takes a second or two to import."""
    from spacy.lang.en import English

    exceptions = English.Defaults.tokenizer_exceptions
    return frozenset(orth for orth in exceptions if orth.endswith(".") and orth != "._.")


def ends_on_abbreviation(text: str) -> bool:
    """Whether `text`'s last word is an abbreviation or initials, whose period ends no sentence."""
    last_word = text.rsplit(None, 1)[-1].lstrip(_OPENING_PUNCTUATION) if text.strip() else ""
    return last_word in abbreviations() or _INITIALS.fullmatch(last_word) is not None


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each sentence, in order; paragraph breaks end sentences
    too. Offsets index `text` itself, so `text[start:end]` is a verbatim piece of it."""
    spans: list[tuple[int, int]] = []
    for paragraph in re.finditer(r"[^\n]+(?:\n(?!\s*\n)[^\n]+)*", text):
        start = paragraph.start()
        for boundary in SENTENCE_END.finditer(paragraph.group()):
            joined_on_the_line = "\n" not in boundary.group()
            end = paragraph.start() + boundary.start()
            # The last word is all that counts: a bounded tail keeps a long run-on linear.
            before = text[max(start, end - ABBREVIATION_TAIL_CHARS) : end]
            if joined_on_the_line and ends_on_abbreviation(before):
                continue
            spans.append((start, end))
            start = paragraph.start() + boundary.end()
        spans.append((start, paragraph.end()))
    return [(a, b) for a, b in spans if text[a:b].strip()]
