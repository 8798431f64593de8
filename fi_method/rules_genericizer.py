"""The `rules` engine of the genericizer role: an offline, deterministic heuristic that turns a
query into a template without any model. An honest baseline, not a stand-in for the released
templatizer: it slots quoted phrases, numbers and dates, capitalised names and rare noun phrases."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from wordfreq import zipf_frequency

from fi_method.genericizer import GenericizedQuery
from fi_method.templates import FI_CLOSE, FI_OPEN, TemplateError
from fi_method.text import fold_for_matching

# ---------------------------------------------------------------------------------------------
# The `rules` engine
#
# A span becomes a slot when it is quoted, a number or date, a capitalised name, or a noun phrase
# holding a rare word. Word rarity comes from wordfreq's Zipf scale (log10 of occurrences per
# billion words): below 3.5 is rarer than about 3 per million words, which keeps everyday words
# ("bread", "city") in the template and catches jargon and specifics ("sourdough", "fibrin").

RARE_WORD_ZIPF = 3.5
# Everyday words ("man", "god") sit above this; even the best-known names ("London") below it.
COMMON_WORD_ZIPF = 5.5
# More slots than this and a template stops reading like the query it came from.
MAX_SLOTS = 6
MAX_QUOTED_WORDS = 8
MAX_TOPIC_WORDS = 4
MAX_DESCRIBED_TOPICS = 3
# Sentences this capitalised are title case or shouting, where capitals say nothing of names.
TITLE_CASE_SHARE = 0.7
TITLE_CASE_MIN_WORDS = 4

QUOTED_DESCRIPTION = "a title or quoted phrase"
ENTITY_DESCRIPTION = "a named entity such as a person, place or product"
TOPIC_DESCRIPTION = "a specific topic or concept"

_WORD = re.compile(r"[^\W\d_]\w*(?:[-'’]\w+)*")
_SENTENCE_BREAK = re.compile(r"[.!?:;\n\"“”()\[\]*•|]")
_INLINE_SPACE = re.compile(r"[ \t]+")
_POSSESSIVE = ("'s", "’s")

STOPWORDS = frozenset(
    {
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "aren't",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "can't",
        "cannot",
        "could",
        "couldn't",
        "did",
        "didn't",
        "do",
        "does",
        "doesn't",
        "doing",
        "don't",
        "down",
        "during",
        "each",
        "either",
        "etc",
        "even",
        "ever",
        "every",
        "few",
        "for",
        "from",
        "further",
        "get",
        "gets",
        "getting",
        "got",
        "had",
        "hadn't",
        "has",
        "hasn't",
        "have",
        "haven't",
        "having",
        "he",
        "he'd",
        "he'll",
        "he's",
        "her",
        "here",
        "here's",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "how's",
        "however",
        "i",
        "i'd",
        "i'll",
        "i'm",
        "i've",
        "if",
        "in",
        "into",
        "is",
        "isn't",
        "it",
        "it's",
        "its",
        "itself",
        "just",
        "let's",
        "like",
        "many",
        "may",
        "me",
        "might",
        "more",
        "most",
        "much",
        "must",
        "mustn't",
        "my",
        "myself",
        "neither",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "one",
        "only",
        "or",
        "other",
        "ought",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "per",
        "please",
        "rather",
        "really",
        "same",
        "shall",
        "shan't",
        "she",
        "she'd",
        "she'll",
        "she's",
        "should",
        "shouldn't",
        "so",
        "some",
        "such",
        "than",
        "that",
        "that's",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "there's",
        "these",
        "they",
        "they'd",
        "they'll",
        "they're",
        "they've",
        "this",
        "those",
        "though",
        "through",
        "thus",
        "to",
        "too",
        "under",
        "until",
        "up",
        "upon",
        "us",
        "very",
        "via",
        "was",
        "wasn't",
        "we",
        "we'd",
        "we'll",
        "we're",
        "we've",
        "were",
        "weren't",
        "what",
        "what's",
        "whatever",
        "when",
        "when's",
        "where",
        "where's",
        "whether",
        "which",
        "while",
        "who",
        "who's",
        "whom",
        "whose",
        "why",
        "why's",
        "will",
        "with",
        "within",
        "without",
        "won't",
        "would",
        "wouldn't",
        "yes",
        "yet",
        "you",
        "you'd",
        "you'll",
        "you're",
        "you've",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "along",
        "alongside",
        "although",
        "among",
        "amongst",
        "anyway",
        "behind",
        "beneath",
        "beside",
        "besides",
        "beyond",
        "despite",
        "hence",
        "inside",
        "instead",
        "moreover",
        "nevertheless",
        "onto",
        "otherwise",
        "outside",
        "therefore",
        "toward",
        "towards",
        "unless",
        "whereas",
        "whilst",
        "yeah",
    }
)

# Request verbs open most queries; they are never names and never the topic.
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
_DAYS = frozenset({"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"})
_NOT_NAMES = _DAYS | {month.lower() for month in _MONTHS} | {"ok"}
# "and" is left out: "Python and Java" is more often two names than one title.
_CONNECTORS = frozenset({"of", "the", "de", "del", "la", "le", "van", "von", "der", "da", "&"})

_PERSON_TITLES = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "miss",
        "dr",
        "prof",
        "professor",
        "sir",
        "lady",
        "lord",
        "saint",
        "st",
        "president",
        "king",
        "queen",
        "prince",
        "princess",
        "pope",
        "general",
        "captain",
        "senator",
        "governor",
        "judge",
        "uncle",
        "aunt",
    }
)
_ORGANIZATION_CUES = frozenset(
    {
        "university",
        "college",
        "institute",
        "academy",
        "school",
        "hospital",
        "inc",
        "corp",
        "corporation",
        "company",
        "co",
        "ltd",
        "llc",
        "plc",
        "group",
        "bank",
        "association",
        "foundation",
        "agency",
        "council",
        "committee",
        "department",
        "ministry",
        "party",
        "club",
        "society",
        "federation",
        "league",
        "union",
        "organization",
        "organisation",
        "airlines",
        "motors",
        "technologies",
        "labs",
        "studios",
        "press",
        "records",
        "network",
        "fc",
        "team",
    }
)
_PLACE_CUES = frozenset(
    {
        "city",
        "town",
        "village",
        "county",
        "state",
        "states",
        "province",
        "kingdom",
        "republic",
        "empire",
        "island",
        "islands",
        "river",
        "lake",
        "sea",
        "ocean",
        "bay",
        "gulf",
        "mountain",
        "mountains",
        "mount",
        "mt",
        "valley",
        "desert",
        "forest",
        "park",
        "beach",
        "coast",
        "street",
        "avenue",
        "road",
        "square",
        "bridge",
        "tower",
        "airport",
        "station",
        "district",
        "region",
        "peninsula",
        "canyon",
        "falls",
    }
)
_PLACE_PREPOSITIONS = frozenset(
    {"in", "at", "from", "near", "across", "throughout", "around", "inside", "visit", "visiting"}
)
_DEMONYMS = frozenset(
    {
        "african",
        "american",
        "arab",
        "arabic",
        "asian",
        "australian",
        "brazilian",
        "british",
        "buddhist",
        "canadian",
        "catholic",
        "chinese",
        "christian",
        "danish",
        "dutch",
        "egyptian",
        "english",
        "european",
        "filipino",
        "finnish",
        "french",
        "german",
        "greek",
        "hindu",
        "indian",
        "indonesian",
        "iranian",
        "irish",
        "islamic",
        "israeli",
        "italian",
        "japanese",
        "jew",
        "jewish",
        "korean",
        "latin",
        "mexican",
        "muslim",
        "nigerian",
        "norwegian",
        "pakistani",
        "persian",
        "polish",
        "portuguese",
        "roman",
        "russian",
        "scottish",
        "spanish",
        "swedish",
        "thai",
        "turkish",
        "ukrainian",
        "vietnamese",
    }
)


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


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    text: str
    sentence_start: bool

    @property
    def lower(self) -> str:
        """Lower case without a possessive "'s": the form looked up in word lists."""
        return self.text.lower().removesuffix("'s").removesuffix("’s")

    @property
    def capitalised(self) -> bool:
        return self.text[0].isupper()


def _zipf(word: str) -> float:
    # Folded so that "naïve" is looked up as the common "naive".
    return zipf_frequency(fold_for_matching(word), "en")


def _is_rare(word: str) -> bool:
    return _zipf(word) < RARE_WORD_ZIPF


# Suffixes of adjectives, adverbs and verb forms: such words modify a topic or are the query's
# own verbs, so they never head a topic phrase, make it specific, or form a person's name.
_NOT_NOUN_ENDINGS = (
    "al",
    "ic",
    "ive",
    "ous",
    "ful",
    "ent",
    "able",
    "ible",
    "less",
    "est",
    "ary",
    "ian",
    "ate",
    "ise",
    "ize",
    "ises",
    "izes",
    "ish",
    "ly",
    "ing",
    "ed",
)
# Adverbs and verb forms end a noun phrase outright; adjectives may lead into one.
_PHRASE_BREAK_ENDINGS = ("ly", "ing", "ed")
# Abstract nouns ("Quality Assurance", "Identity Verification") name concepts, not people or
# places, even when capitalised.
_ABSTRACT_NOUN_ENDINGS = (
    "ment",
    "ness",
    "tion",
    "sion",
    "ity",
    "ance",
    "ence",
    "ism",
    "ics",
    "ogy",
    "ship",
    "ing",
)


def _is_noun_like(token: _Token) -> bool:
    return not token.lower.endswith(_NOT_NOUN_ENDINGS)


def _tokens(query: str) -> list[_Token]:
    """Word tokens, each knowing whether it opens a sentence (or a line, a quote, a bracket)."""
    tokens: list[_Token] = []
    for match in _WORD.finditer(query):
        if query[match.start() - 1 : match.start()] == "\\":
            # A TeX command ("\mathbb") or an escape, not a word.
            continue
        previous = tokens[-1] if tokens else None
        if previous is None:
            opens = True
        else:
            gap = query[previous.end : match.start()]
            # "Dr. Smith": the full stop of a title does not end the sentence.
            after_title = gap.startswith(".") and previous.lower in _PERSON_TITLES
            opens = bool(_SENTENCE_BREAK.search(gap[1:] if after_title else gap))
        tokens.append(_Token(match.start(), match.end(), match.group(), opens))
    return tokens


def _sentences(tokens: list[_Token]) -> list[list[_Token]]:
    sentences: list[list[_Token]] = []
    for token in tokens:
        if token.sentence_start or not sentences:
            sentences.append([])
        sentences[-1].append(token)
    return sentences


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


# -- named entities ---------------------------------------------------------------------------


def _title_case_sentences(tokens: list[_Token]) -> set[int]:
    """Start offsets of tokens in sentences written in title case or all capitals."""
    flagged: set[int] = set()
    for sentence in _sentences(tokens):
        inner = sentence[1:]
        if len(sentence) >= TITLE_CASE_MIN_WORDS:
            capitalised = sum(token.capitalised for token in inner)
            if capitalised >= TITLE_CASE_SHARE * len(inner):
                flagged.update(token.start for token in sentence)
    return flagged


def _name_runs(query: str, tokens: list[_Token]) -> list[list[_Token]]:
    """Runs of capitalised words on one line (joined by single spaces or a title's full stop,
    connectors such as "of" allowed inside), request verbs and function words excluded."""
    runs: list[list[_Token]] = []
    current: list[_Token] = []
    for token in tokens:
        joined = (
            bool(current)
            and not token.sentence_start
            and bool(_INLINE_SPACE.fullmatch(query[current[-1].end : token.start].lstrip(".")))
        )
        if not joined:
            runs.append(current)
            current = []
        name_word = token.capitalised and token.lower not in STOPWORDS
        if name_word or (current and token.lower in _CONNECTORS):
            current.append(token)
        else:
            runs.append(current)
            current = []
    runs.append(current)
    trimmed = []
    for run in runs:
        # A capitalised request verb opens a sentence even where the full stop is missing
        # ("User Show that ..."); a lone capital at an edge is a variable or a list letter.
        while run and (run[0].lower in REQUEST_VERBS or len(run[0].text) == 1):
            run = run[1:]
        while run and (run[-1].lower in _CONNECTORS | REQUEST_VERBS or len(run[-1].text) == 1):
            run = run[:-1]
        if run:
            trimmed.append(run)
    return trimmed


def _looks_like_first_last_name(run: list[_Token]) -> bool:
    """Two title-case words, neither an everyday word ("Full Moon"), a plural ("Star Wars") or
    shaped like an abstract noun or adjective ("Quality Assurance")."""
    return len(run) == 2 and all(
        len(token.text) > 1
        and token.text.isalpha()
        and token.text.istitle()
        and _zipf(token.lower) < COMMON_WORD_ZIPF
        and not token.lower.endswith(("s", *_ABSTRACT_NOUN_ENDINGS))
        and _is_noun_like(token)
        for token in run
    )


def _entity_description(run: list[_Token], preceding: list[str]) -> str:
    """What kind of name a run of capitalised words is, from cue words inside it and from the
    two words before it (`preceding`, lower case, nearest last)."""
    words_lower = [token.lower for token in run]
    if words_lower[0] in _PERSON_TITLES:
        return "a person"
    if any(word in _ORGANIZATION_CUES for word in words_lower):
        return "an organization"
    if any(word in _PLACE_CUES for word in words_lower):
        return "a place"
    if len(run) == 1 and {words_lower[0], words_lower[0].removesuffix("s")} & _DEMONYMS:
        return "a nationality, language or culture"
    if len(run) == 1 and len(run[0].text) > 1 and run[0].text.removesuffix("s").isupper():
        return "an acronym or abbreviated name"
    abstract = any(word.endswith(_ABSTRACT_NOUN_ENDINGS) for word in words_lower)
    after_preposition = preceding[-1:] and preceding[-1] in _PLACE_PREPOSITIONS
    after_place_word = preceding[-2:-1] and preceding[-2] in _PLACE_CUES and preceding[-1] == "of"
    if not abstract and (after_preposition or after_place_word):
        return "a place"
    if _looks_like_first_last_name(run):
        return "a person"
    return ENTITY_DESCRIPTION


def _entity_spans(query: str, tokens: list[_Token]) -> list[_Span]:
    title_case = _title_case_sentences(tokens)
    index_of = {token.start: i for i, token in enumerate(tokens)}
    spans = []
    for run in _name_runs(query, tokens):
        first, last = run[0], run[-1]
        if first.start in title_case or all(token.lower in _NOT_NAMES for token in run):
            continue
        if len(run) == 1 and _zipf(first.lower) >= COMMON_WORD_ZIPF:
            # A capitalised everyday word ("Man" opening a poem's line) is not a name.
            continue
        if first.sentence_start:
            # A sentence opener is capitalised anyway: it counts as a name only when it is
            # several capitalised words (but not a heading such as "Reference Text:") or a word
            # too rare to be ordinary English.
            heading = query[last.end : last.end + 1] == ":"
            if heading or (len(run) == 1 and not _is_rare(first.lower)):
                continue
        end = last.end - 2 if last.text.endswith(_POSSESSIVE) else last.end
        position = index_of[first.start]
        preceding = [token.lower for token in tokens[max(0, position - 2) : position]]
        spans.append(_Span(first.start, end, _entity_description(run, preceding)))
    return spans


# -- topical noun phrases ---------------------------------------------------------------------

# Everyday verbs that are not "-ed" forms: a rare noun is not followed into "never became ...".
_COMMON_VERBS = frozenset(
    {
        "affect",
        "allow",
        "appear",
        "ask",
        "ate",
        "become",
        "became",
        "begin",
        "began",
        "believe",
        "bought",
        "break",
        "bring",
        "broke",
        "brought",
        "build",
        "built",
        "buy",
        "call",
        "came",
        "carry",
        "catch",
        "caught",
        "cause",
        "change",
        "choose",
        "chose",
        "come",
        "consider",
        "continue",
        "cover",
        "cut",
        "decide",
        "die",
        "draw",
        "drew",
        "eat",
        "expect",
        "explain",
        "fall",
        "feel",
        "fell",
        "felt",
        "find",
        "follow",
        "found",
        "gave",
        "get",
        "give",
        "go",
        "goes",
        "got",
        "grew",
        "grow",
        "happen",
        "hear",
        "held",
        "hit",
        "hold",
        "keep",
        "kept",
        "kill",
        "knew",
        "know",
        "lead",
        "learn",
        "leave",
        "led",
        "left",
        "let",
        "live",
        "look",
        "lose",
        "lost",
        "love",
        "made",
        "make",
        "mean",
        "meant",
        "meet",
        "met",
        "move",
        "need",
        "offer",
        "open",
        "paid",
        "pass",
        "pay",
        "play",
        "produce",
        "pull",
        "put",
        "raise",
        "ran",
        "reach",
        "read",
        "receive",
        "remain",
        "remember",
        "report",
        "require",
        "run",
        "said",
        "saw",
        "say",
        "see",
        "seem",
        "sell",
        "send",
        "sent",
        "serve",
        "set",
        "show",
        "sit",
        "sold",
        "speak",
        "spend",
        "spent",
        "spoke",
        "stand",
        "stay",
        "stood",
        "stop",
        "suggest",
        "take",
        "tell",
        "think",
        "thought",
        "told",
        "took",
        "try",
        "turn",
        "understand",
        "understood",
        "wait",
        "walk",
        "want",
        "watch",
        "went",
        "win",
        "won",
        "work",
        "write",
        "wrote",
    }
)
_NUMBER_WORDS = frozenset(
    {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "hundred",
        "thousand",
        "million",
        "billion",
        "once",
        "twice",
        "thrice",
        "first",
        "second",
        "third",
        "last",
        "next",
    }
)
_TOPIC_KINDS = (
    (("ology", "ics", "graphy", "onomy"), "a field of study"),
    (("ism", "isms"), "an ideology or movement"),
    (("itis", "osis", "emia", "aemia", "oma", "pathy", "algia", "trophy"), "a medical condition"),
)


def _is_content_word(token: _Token) -> bool:
    return (
        not token.capitalised
        and token.text.replace("-", "").replace("'", "").replace("’", "").isalpha()
        and len(token.text) >= 3
        and token.lower not in STOPWORDS
        and token.lower not in REQUEST_VERBS
        and token.lower not in _NUMBER_WORDS
        and not token.lower.endswith(_PHRASE_BREAK_ENDINGS)
    )


def _may_follow(token: _Token) -> bool:
    """Whether a word after a rare noun continues its noun phrase ("sourdough bread"): a noun,
    but not a verb or an everyday word such as "never"."""
    verb = token.lower in _COMMON_VERBS or token.lower.removesuffix("s") in _COMMON_VERBS
    return _is_noun_like(token) and not verb and _zipf(token.lower) < COMMON_WORD_ZIPF


def _singular(noun: str) -> str:
    if noun.endswith("ies") and len(noun) > 4:
        return noun[:-3] + "y"
    if noun.endswith(("ches", "shes", "sses", "xes")):
        return noun[:-2]
    if noun.endswith("s") and not noun.endswith(("ss", "us", "is")):
        return noun[:-1]
    return noun


def _topic_description(phrase: list[_Token]) -> str:
    """A common head names the kind ("sourdough bread": a kind of bread); a rare head is
    described by its suffix where that is telling ("thrombosis": a medical condition)."""
    head = phrase[-1].lower
    if not _is_rare(head):
        return f"a kind of {_singular(head)}" if head.isalpha() else TOPIC_DESCRIPTION
    for endings, description in _TOPIC_KINDS:
        if head.endswith(endings):
            return description
    return TOPIC_DESCRIPTION


def _topic_spans(query: str, tokens: list[_Token]) -> list[_Span]:
    """Noun phrases made specific by a rare noun: "sourdough bread", "thrombosis"."""
    runs: list[list[_Token]] = [[]]
    for token in tokens:
        contiguous = runs[-1] and _INLINE_SPACE.fullmatch(query[runs[-1][-1].end : token.start])
        if not contiguous:
            runs.append([])
        if _is_content_word(token):
            runs[-1].append(token)
        else:
            runs.append([])
    spans = []
    for run in runs:
        rare_nouns = [
            i for i, token in enumerate(run) if _is_rare(token.lower) and _is_noun_like(token)
        ]
        if not rare_nouns:
            continue
        # Noun phrases end in their head: start at the first rare noun, reaching back over one
        # adjective only (a common word before it is more likely the query's verb), run on over
        # nouns and end on a noun.
        start = end = rare_nouns[0]
        if start > 0 and not _is_noun_like(run[start - 1]):
            start -= 1
        while end + 1 < min(len(run), start + MAX_TOPIC_WORDS) and _may_follow(run[end + 1]):
            end += 1
        phrase = run[start : end + 1]
        while not _is_noun_like(phrase[-1]):
            phrase = phrase[:-1]
        spans.append(_Span(phrase[0].start, phrase[-1].end, _topic_description(phrase)))
    return spans


# -- from spans to a template -----------------------------------------------------------------

_ORDINAL_VARIANTS = ("another", "a third", "a fourth", "a fifth", "a sixth")


def _overlaps(span: _Span, taken: list[_Span]) -> bool:
    return any(span.start < other.end and other.start < span.end for other in taken)


def _variable_shortened_to(surface: str, variables: list[str]) -> str | None:
    """The earlier multi-word name that a single word is short for ("Tesla" after "Nikola
    Tesla"), so that both stand for one variable."""
    if " " in surface or not surface[:1].isupper():
        return None
    for variable in variables:
        names = variable.split()
        if len(names) > 1 and surface in (names[0], names[-1]):
            return variable
    return None


def _candidate_spans(text: str) -> list[_Span]:
    """Everything specific enough to be a slot, by priority: quoted phrases, numbers and dates,
    capitalised names, noun phrases holding a rare word (they may overlap)."""
    tokens = _tokens(text)
    return (
        _quoted_spans(text)
        + _numeric_spans(text)
        + _entity_spans(text, tokens)
        + _topic_spans(text, tokens)
    )


def slot_fillers(text: str) -> list[tuple[str, str]]:
    """The (surface text, kind) pairs a text offers to fill `<fi>` slots with, the same spans the
    genericizer turns into slots, in order of first appearance, each surface once. The kind is a
    slot description such as "a date" or "a named entity such as a person, place or product"."""
    chosen: list[_Span] = []
    for span in _candidate_spans(text):
        if not _overlaps(span, chosen):
            chosen.append(span)
    fillers: dict[str, str] = {}
    for span in sorted(chosen, key=lambda span: span.start):
        fillers.setdefault(text[span.start : span.end], span.description)
    return list(fillers.items())


def _choose_slots(query: str) -> list[_Slot]:
    """Non-overlapping slots for at most MAX_SLOTS variables. A variable is a surface text
    (with its short forms): every occurrence of it is a slot, all with one description, and
    distinct variables of the same kind become "another ...", since a repeated description
    means a repeated value."""
    candidates = _candidate_spans(query)
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
            f"{_ORDINAL_VARIANTS[earlier - 1]} {noun_phrase}" if earlier else kind
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


def _intent(query: str) -> str:
    """What the query asks for, from the first sentence that shows it. A question word counts
    where it opens a clause (sentence start, after a comma, after a request verb): elsewhere it
    is usually a relative pronoun ("a city where ..."). A request verb counts where it opens the
    sentence or follows "you", "please", "me"... A yes/no opener ("Is", "Can") or a question
    mark counts last."""
    for sentence in _sentences(_tokens(query)):
        explain = False
        for position, token in enumerate(sentence):
            previous = sentence[position - 1] if position else None
            opens_clause = previous is None or "," in query[previous.end : token.start]
            if token.lower in _COMPARISON_WORDS:
                return "compare"
            if token.lower in _QUESTION_WORD_INTENTS and (
                opens_clause or previous.lower in _VERB_INTENTS or previous.lower in _VERB_LEADS
            ):
                return _QUESTION_WORD_INTENTS[token.lower]
            if token.lower in _VERB_INTENTS and (opens_clause or previous.lower in _VERB_LEADS):
                # "Tell me why ...": a question word after "explain" or "tell" says more.
                if _VERB_INTENTS[token.lower] != "what":
                    return _VERB_INTENTS[token.lower]
                explain = True
        if explain:
            return "what"
        asks = "?" in query[sentence[-1].end : sentence[-1].end + 3]
        if asks or sentence[0].lower in _YES_NO_OPENERS:
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
    """Genericize a query without a model: quoted phrases, numbers and dates, capitalised names
    and noun phrases holding a rare word become `<fi>` slots (at most MAX_SLOTS distinct ones,
    the same text always the same slot), and the compatible document description is written from
    the slot descriptions and the query's intent, never from its words. Deterministic. Raises
    TemplateError("no_tags") when nothing in the query is specific enough to become a slot."""
    slots = _choose_slots(query)
    if not slots:
        raise TemplateError("no_tags", "nothing in the query is specific enough to become a slot")
    pieces: list[str] = []
    cursor = 0
    for slot in slots:
        pieces.append(query[cursor : slot.start])
        pieces.append(f"{FI_OPEN}{slot.description}{FI_CLOSE}")
        cursor = slot.end
    pieces.append(query[cursor:])
    return GenericizedQuery("".join(pieces), _document_description(slots, _intent(query)))


def rules_output(query: str) -> str:
    """The rules genericizer's output in the model's format (JSON); a query it cannot genericize
    comes back unchanged, without slots, and validation rejects it as `no_tags`."""
    try:
        found = rules_genericize(query)
    except TemplateError:
        found = GenericizedQuery(query, "")
    return json.dumps(vars(found), ensure_ascii=False)
