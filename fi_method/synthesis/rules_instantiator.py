"""The instantiator role without a language model (the `rules` engine), shaped like the released
instantiator's output: a long verbatim excerpt of the matched passage answers the template, and
the template's slots are filled with spans of that same excerpt, so the instruction is about its
answer. It writes the released instantiator's format (JSON, long copies as `<excerpt>` markers, or
`null`), so every pair goes through the same parser and grounding checks as a model's.

A template is instantiated only where the passage supports it; everywhere else the output is
`null`, followed by the reason in words (the parser reads any `null` output as `null`). For one
template and one passage (a chunk of a document, fi_method.retrieval.chunking), read within the
window of the document a model would read around it:
1. The template's own words (its text outside the slots, stopwords, request verbs and question
   words aside) must all occur in one short run of WINDOW_SENTENCES consecutive sentences: that is
   where the passage speaks of what the template asks ("floors" for "how many floors ...").
2. Each distinct slot description is filled with a span of that same run whose kind matches the
   description: a place for a place, a person for a person (fi_method.templating.rules_genericizer's
   spans: spaCy's entities and noun chunks, numbers and dates, typed in the vocabulary slots are
   described in; a description in other words matches a kind by embedding similarity). The span
   stands next to the template's words and the passage's parse ties it to them as the template
   does: through the template's own words, other values or prepositions of place only, and not as
   the doer where the template makes it the thing done to ("who uses <fi>a person</fi>?" is not
   answered by "Ferris uses the device"), or the other way round; a value the template holds
   under a noun through a preposition is what has that noun in the passage too ("the N of X",
   "X's N", "X has an N"; "what is the capital of <fi>a country</fi>?" is asked of France, not of
   Paris, in "Paris, the capital of France", and of nothing in "the former capital of Japan").
   The sentence saying so is no question: a quiz answers nothing. "play a role in"
   (fi_method.templating.rules_genericizer.plays_a_part) is not the acting a template's "play"
   asks about, and one who plays, stars or appears is a performer (a person, a group, a
   people). A span that points back into
   its passage ("the title") names nothing out of it and fills no slot, and a template whose slots
   are all numbers or dates ("Summarize for a <fi>a length of time</fi> old") names no subject a
   passage could be about.
3. What a question asks for (a place for "where", a time for "when", a person for "who", a number
   for "how many") must be in that run too, beside the slot values.
4. A template with no words of its own ("explain <fi>a topic</fi>") asks about its slot value
   alone, so that value must be what the excerpt is about: named again in the excerpt.
5. Among the runs that qualify, the one nearest the anchor wins: the passage vector that retrieved
   the template is Gaussian-pooled around k/(K+1) of the passage, and the paper finds the answer
   excerpt where that vector points (Pearson 0.99 between the two).
6. The answer is the run of consecutive sentences from that run's first, grown forward then back
   through the document until it holds ANSWER_TARGET_WORDS words: an excerpt of a few paragraphs,
   as the released instantiator copies.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import NamedTuple

from wordfreq import zipf_frequency

from fi_method.roles import Embed, MemoizedEmbed
from fi_method.synthesis.excerpts import EXCERPT_CLOSE, EXCERPT_ELLIPSIS, EXCERPT_OPEN
from fi_method.templating.rules_genericizer import (
    ACTING_VERBS,
    COMMON_WORD_ZIPF,
    ENTITY_DESCRIPTION,
    IDIOM_OBJECTS,
    PARSE_CACHE_SIZE,
    TOPIC_DESCRIPTION,
    filler_spans,
    intent,
    parse,
    parse_document,
    parse_documents,
    plays_a_part,
)
from fi_method.templating.template_words import (
    QUESTION_OPENERS,
    SLOT_STAND_IN,
    asks_about_the_value_alone,
    template_words,
)
from fi_method.templating.templates import FI_OPEN, fill_slots, fixed_text, slot_descriptions
from fi_method.text import sentence_spans, word_keys, words

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
# How close the template's words and its slot values must sit: a sentence and its neighbour.
# Wider runs let a passage that names a country in one sentence and floors in another "answer"
# "how many floors is <country>".
WINDOW_SENTENCES = 2
# A slot description in words of its own (a model's template) matches a filler kind at this
# cosine similarity (MiniLM) or above. Among the rules vocabulary, "a city or country" ~ "a
# country" is 0.78 and "a disease or medical condition" ~ "a medical or psychological condition"
# 0.82, while "a city or country" ~ "a place" is 0.67 (the tagger calls the Eiffel Tower a place)
# and "a person" ~ "a product" 0.48: different things sit below.
MIN_KIND_SIMILARITY = 0.7
# What the excerpt is about outweighs a closer kind: each mention of a filler (up to
# MAX_SALIENCE) adds this to its similarity, so "the Eiffel Tower", named four times, fills "a
# landmark" rather than "the Chrysler Building", named twice, while "Paris" (a city) still fills
# "a city" before the tower does.
SALIENCE_WEIGHT = 0.05
MAX_SALIENCE = 4
# How near a value the template's words must be: about ten words, within one sentence. In
# "Thomas Lincoln and Nancy Hanks were married" the value is 25 characters from "married"; in
# "Thomas Lincoln bought ... farms in Kentucky, including the Sinking Spring farm, where Abraham
# was born", "born" is 100 characters from "Thomas Lincoln".
MAX_GAP_CHARS = 60
# A value a template asks about alone ("explain <fi>a topic</fi>") is what its excerpt is about
# when the excerpt names it at least this often.
MIN_MENTIONS_OF_A_SOLE_VALUE = 2
# How the passage must tie a value to the template's words: in its parse, the dependency path
# from the value to one of those words passes through at most this many tokens, each a word of
# the template itself ("was" in "when <fi>a person</fi> was president", "in" in "who won
# <fi>an award</fi> in <fi>a year</fi>"), another value, or a preposition of place where the
# template places its value with one. "Ferris uses the device on Galt" does not tie Galt to
# "uses" as "who uses <fi>a person</fi>" asks ("on" stands between), nor "the Tsimshian people
# came to Alaska" Alaska to "came" as "what people came from <fi>a place</fi>" asks.
MAX_LINK_TOKENS = 3
# A value that opens with one of these and goes on in everyday lower-case words ("the title",
# "their support") points back into its passage: out of it, it names nothing.
_POINTING_WORDS = frozenset(
    {"the", "this", "that", "these", "those", "his", "her", "its", "their", "our", "my", "your"}
)
REQUEST_LEAD = "Here is what the source says:"
# Longer spans are clauses, not the entity or concept a slot stands for.
MAX_FILLER_WORDS = 6
_MARKUP = re.compile(r"==|\||\[\[|\]\]|\{\{|^File:|\.(?:jpe?g|png|svg|gif)$", re.IGNORECASE)
_WORD = re.compile(r"\w+(?:['’]\w+)*")
_ARTICLE_START = re.compile(r"^(?:The|A|An)(?= )")
# A span of a parse that ends on a lower-case function word is cut short: "the Kingdom of the"
# ("Vitamin A" is not).
_CUT_SHORT = re.compile(r"\b(?:the|a|an|of|and|or|in|on|at|to|for|with|by|from)\W*$")
# Wiki markup left in a span ("= Africa"): a value opens with a letter, a digit or a quote.
_OPENS_WITH_MARKUP = re.compile(r"^[^\w\"“‘'(]")

# Filler kinds of the rules vocabulary that a generic description accepts: a named entity is any
# of the named kinds, a topic any kind of thing that is not a name, a number or a date.
_NAMED_KINDS = frozenset(
    {
        "a person",
        "a nationality, religion or political group",
        "a building or landmark",
        "an organization",
        "a city or country",
        "a place",
        "a product",
        "an event",
        "a book, film or other work",
        "a law or legal document",
        "a language",
        "an acronym or abbreviated name",
        ENTITY_DESCRIPTION,
    }
)
_TOPIC_KINDS = frozenset(
    {
        TOPIC_DESCRIPTION,
        "a field of study",
        "an ideology or movement",
        "a disease or medical condition",
    }
)
# What a question asks for, read from its opening words, and the filler kinds that give it.
_PLACES = frozenset({"a city or country", "a place", "a building or landmark"})
_TIMES = frozenset({"a date", "a year", "a decade", "a century", "a month"})
_NUMBERS = frozenset(
    {
        "a number",
        "a quantity",
        "a percentage",
        "an amount of money",
        "a length of time",
        "a length of text",
        "an ordinal number",
        "a year",
    }
)
_ASKS = (
    (
        re.compile(r"^\s*(?:where|in what (?:country|city|state|place))\b", re.IGNORECASE),
        "a place",
        _PLACES,
    ),
    (
        re.compile(r"^\s*(?:when|what (?:year|date|century|decade))\b", re.IGNORECASE),
        "a time",
        _TIMES,
    ),
    (
        re.compile(
            r"^\s*(?:what|which) (?:countries|country|cities|city|states?|towns?|regions?)\b",
            re.IGNORECASE,
        ),
        "a place",
        _PLACES,
    ),
    # The small parser labels most languages as a people's adjective ("Kurdish", "Arabic").
    (
        re.compile(r"^\s*(?:what|which) languages?\b", re.IGNORECASE),
        "a language",
        frozenset({"a language", "a nationality, religion or political group"}),
    ),
    (re.compile(r"^\s*(?:who|whom)\b", re.IGNORECASE), "a person", frozenset({"a person"})),
    (re.compile(r"^\s*how (?:many|much|long|old|tall|far)\b", re.IGNORECASE), "a number", _NUMBERS),
)
# Words of place that stopword lists drop although a template asks about them: "what countries
# are around <fi>a country</fi>" asks for neighbours, which a passage names by their border. A
# run of sentences answers only if it says one of _NEIGHBOURING (as word keys).
_PLACE_RELATIONS = frozenset(
    {"around", "near", "nearby", "surrounding", "neighbouring", "neighboring"}
)
_NEIGHBOURING = frozenset(
    word_keys(
        ["around", "near", "nearby", "border", "neighbour", "neighbor", "surround", "adjacent"]
    )
)


def usable_filler(surface: str) -> bool:
    """A filler that reads as a value in an instruction: one line of a few words, not markup
    (section headings, list runs and file names are spans of a parse, not values), and not a
    phrase that points back into its passage ("the title": which title?)."""
    return (
        "\n" not in surface
        and len(surface.split()) <= MAX_FILLER_WORDS
        and not _MARKUP.search(surface)
        and not points_back(surface)
        and not _CUT_SHORT.search(surface)
        and not _OPENS_WITH_MARKUP.match(surface)
    )


def points_back(surface: str) -> bool:
    """Whether a value is a determiner or possessive followed by everyday lower-case words only
    ("the title", "their support", not "the Eiffel Tower" or "the mitochondria"): it names a
    thing only inside its passage."""
    first, *rest = surface.split() or [""]
    return (
        first.lower() in _POINTING_WORDS
        and bool(rest)
        and all(
            word.islower() and zipf_frequency(word.strip(".,;:"), "en") >= COMMON_WORD_ZIPF - 1
            for word in rest
        )
    )


def asked_kind(template: str) -> tuple[str, frozenset[str]] | None:
    """What a question template asks for (a place, a time, a person, a number) and the filler
    kinds that give it; None for other templates."""
    text = fixed_text(template)
    return next(((what, kinds) for pattern, what, kinds in _ASKS if pattern.search(text)), None)


# A run's words are looked up once per filler and value: computed once per run.
@lru_cache(maxsize=256)
def _word_positions(text: str, run: tuple[_Sentence, ...]) -> tuple[tuple[int, int, str], ...]:
    """(sentence, character offset, key) of each word of a run of sentences."""
    found = []
    for index, sentence in enumerate(run):
        matches = list(_WORD.finditer(text, sentence.start, sentence.end))
        keys = word_keys([match.group().lower() for match in matches])
        found += [(index, match.start(), key) for match, key in zip(matches, keys, strict=True)]
    return tuple(found)


def _occurrences(text: str, run: tuple[_Sentence, ...], surface: str) -> list[tuple[int, int, int]]:
    """(sentence, start, end) of each mention of a value in a run: the value as written, or its
    last word alone ("the tower" for "the Eiffel Tower")."""
    found = []
    head = _head(surface)
    for index, sentence in enumerate(run):
        at = text.find(surface, sentence.start, sentence.end)
        while at >= 0:
            found.append((index, at, at + len(surface)))
            at = text.find(surface, at + len(surface), sentence.end)
    found += [(index, at, at) for index, at, key in _word_positions(text, run) if key == head]
    return found


def _gap(at: int, start: int, end: int) -> int:
    return max(start - at, at - end, 0)


def _near_words(text: str, run: tuple[_Sentence, ...], needed: set[str]) -> Callable[[str], bool]:
    """Whether a value has one of the template's words (`needed` keys) within MAX_GAP_CHARS of a
    mention of it, in the same sentence."""
    positions = [(index, at) for index, at, key in _word_positions(text, run) if key in needed]

    def near(surface: str) -> bool:
        return any(
            index == other and _gap(at, start, end) <= MAX_GAP_CHARS
            for other, start, end in _occurrences(text, run, surface)
            for index, at in positions
        )

    return near


def _all_words_near_values(
    text: str, run: tuple[_Sentence, ...], needed: set[str], values: list[str]
) -> bool:
    """Whether each of the template's words (`needed` keys) is within MAX_GAP_CHARS of a mention
    of one of its values, in the same sentence, and that sentence is not a question: a quiz's
    "What is the capital of Australia?" asks what the template asks and answers nothing."""
    asking = {index for index, sentence in enumerate(run) if _is_a_question(text, sentence)}
    mentions = [m for value in values for m in _occurrences(text, run, value) if m[0] not in asking]
    positions = _word_positions(text, run)
    return all(
        any(
            index == other and _gap(at, start, end) <= MAX_GAP_CHARS
            for index, at, k in positions
            if k == key
            for other, start, end in mentions
        )
        for key in needed
    )


def _tied(
    reading: _TemplateReading,
    linked: Callable[..., bool],
    kind_of: dict[str, str],
    description: str,
    surface: str,
) -> bool:
    """Whether a value may fill a slot of the template: one who plays, stars or appears is a
    performer, and the passage ties the value to the template's words as the template ties that
    slot (its role, the noun that holds it)."""
    if description in reading.performers and kind_of[surface] not in _PERFORMERS:
        return False
    return linked(surface, reading.roles[description], reading.owners[description])


def _is_a_question(text: str, sentence: _Sentence) -> bool:
    return text[sentence.start : sentence.end].rstrip().endswith("?")


# Who does and who is done to: a value the template makes the doer ("when <fi>a person</fi> was
# president") must not be what the passage's sentence does something to, and the other way
# round ("who uses <fi>a person</fi>?" is not answered by "Ferris uses the device"). Only the
# active subject and the direct object: the small parser often reads a template's passive ("when
# was <fi>a landmark</fi> finished") as active.
_DOER = frozenset({"nsubj"})
_DONE_TO = frozenset({"dobj"})
# Who plays, stars or appears in something: a person, a band or team, a people.
_PERFORMERS = frozenset(
    {"a person", "an organization", "a nationality, religion or political group"}
)
# What a passage calls no longer so ("the former capital"); a template that says one asks about it.
_FORMER = frozenset({"former", "formerly", "erstwhile", "onetime", "ex"})
# Where a template places its value with one of these ("the tower in <fi>a city</fi>"), the
# passage may place it with a chain of them ("the tower on the Champ de Mars in Paris").
_LOCATIVE = frozenset({"in", "on", "at", "near", "of", "within", "inside"})


def _role(token) -> str | None:
    """Whether a token is the doer of its verb, what the verb is done to, or neither."""
    if token.dep_ in _DOER:
        return "doer"
    if token.dep_ in _DONE_TO:
        return "done to"
    return None


# A value the passage itself calls what a "who" question asks for answers the question with its
# own slot: "who was the vice president under <fi>a person</fi>?" is not asked of "Rachid
# Mimouni, later vice-president of Amnesty International", nor "who wrote <fi>a book</fi> of
# <fi>a person</fi>?" of "Zosimos of Panopolis wrote the oldest known books". The template's word
# follows the value's mention, after the "of" tail of its name, a comma and these words; a form of
# "be" is not among them, since "Galt was captured" is said of the one captured.
_CALLED = re.compile(
    r"(?:\s+of\s+[A-Z][\w-]*)*\s*,?\s*"
    r"(?:(?:later|now|then|formerly|former|also|future|current|the|a|an)\s+)*"
    r"([\w-]+)"
)


def _called_what_is_asked(
    text: str, run: tuple[_Sentence, ...], surface: str, needed: set[str]
) -> bool:
    """Whether the run names a value as the template's own words (`needed` keys) describe what
    the question asks for: one of them right after a mention of the value as written."""
    for sentence in run:
        at = text.find(surface, sentence.start, sentence.end)
        while at >= 0:
            following = _CALLED.match(text, at + len(surface), sentence.end)
            if following and needed & set(word_keys(following.group(1).lower().split("-"))):
                return True
            at = text.find(surface, at + len(surface), sentence.end)
    return False


def _answered_by_the_value(asked: str, kind_of: dict[str, str], values: set[str]) -> bool:
    """Whether a question about its value alone is answered by an excerpt about that value: "who
    is X", and "where is X" of a place; "where is <fi>an organization</fi> located" asks for a
    place the excerpt must give."""
    return asked == "a person" or (
        asked == "a place" and all(kind_of[value] in _PLACES for value in values)
    )


# A subject of one of these verbs is plural: "where were <fi>a group</fi> located" is not asked of
# "Albanian" ("Albanian was written ..."), nor "what language do <fi>a group</fi> speak" of
# "Kurdish".
_PLURAL_VERBS = frozenset({"are", "were", "do", "have"})
# And of one of these singular: "where does <fi>a kind of team</fi> play" is not asked of "NFL
# teams", nor "where <fi>a language</fi> is spoken" of "Afroasiatic languages".
_SINGULAR_VERBS = frozenset({"is", "was", "does", "has"})
# A plural filler the parser leaves without a number: a people named by its adjective ("the
# French", "the Swiss", "Chinese"; "the" needed but for "-ese").
_PEOPLE_ADJECTIVE = ("ch", "sh", "ss")
_DO_SUPPORT = frozenset({"do", "does", "did"})
# A question needs a finite verb ("what <fi>a language</fi> called?" lost its "is"), unless it
# asks how or what to do ("how to <fi>a task</fi>").
_FINITE_VERB_TAGS = frozenset({"VBZ", "VBP", "VBD", "MD"})
_GREETINGS = frozenset({"hi", "hello", "hey", "thanks", "thank"})
# A difference is between two things: "explain difference <fi>a topic</fi>" merged both into one.
_COMPARING = frozenset({"difference", "differences", "versus", "vs", "compare", "contrast"})
# "which city is bigger, <fi>a city</fi> or <fi>another city</fi>" asks to choose between them.
_CHOICE = frozenset({"or", "than", "and", "between"})
_SECOND_THING = frozenset({"and", "or", "between", "from", "with", "to", "versus", "vs"})
# A passage copied word for word writes nothing new and rewrites nothing: requests to write or
# rewrite (fi_method.templating.rules_genericizer's intents) are not answered by it.
_NOT_ANSWERED_BY_A_COPY = frozenset({"write", "rewrite"})
_QUESTION_WORDS = frozenset(
    {"what", "which", "where", "when", "who", "whom", "whose", "how", "why"}
)


class _TemplateReading(NamedTuple):
    """What the rules read of a template's own sentence, parsed with a stand-in name per slot."""

    # What may stand between a value and the template's words in a passage's parse: the words
    # of the template's own text and their lemmas.
    lemmas: frozenset[str]
    # The role (_role) each slot description plays in the template's sentence.
    roles: dict[str, str | None]
    # The words of place it says that a passage says in other words (_PLACE_RELATIONS).
    relations: tuple[str, ...]
    # The slot descriptions the template makes the subject of a plural verb, and of a singular.
    plural: frozenset[str]
    singular: frozenset[str]
    # The word keys of the template's noun that holds each slot through a preposition ("capital"
    # in "the capital of <fi>a country</fi>"): a passage must say that noun of the value too.
    owners: dict[str, frozenset[str]]
    # The slot descriptions the template makes the subject of "play", "star", "appear": a
    # performer ("what has <fi>a person</fi> played in?"), never a topic or a program.
    performers: frozenset[str]
    # Why the template is not a whole question, or None: "what language do <fi>a group</fi>?"
    # and "where did al <fi>a kind of attack</fi>?" lost their verb to a slot or never had one.
    broken: str | None


@lru_cache(maxsize=1 << 16)
def _template_reading(template: str) -> _TemplateReading:
    """The template's sentence as the rules read it (_TemplateReading), from the parse
    template_words reads (a stand-in name in each slot)."""
    descriptions = slot_descriptions(template)
    doc = parse(fill_slots(template, dict.fromkeys(descriptions, SLOT_STAND_IN)))
    own = [token for token in doc if token.text != SLOT_STAND_IN]
    lemmas = frozenset({token.lower_ for token in own} | {token.lemma_.lower() for token in own})
    roles: dict[str, str | None] = dict.fromkeys(descriptions)
    plural: set[str] = set()
    singular: set[str] = set()
    stand_ins = [token for token in doc if token.text == SLOT_STAND_IN]
    owners: dict[str, frozenset[str]] = dict.fromkeys(descriptions, frozenset())
    performers: set[str] = set()
    for description, token in zip(descriptions, stand_ins, strict=False):
        roles[description] = roles[description] or _role(token)
        if token.dep_ == "nsubj" and token.head.lemma_ in ACTING_VERBS:
            performers.add(description)
        holder = token.head.head
        if (
            token.dep_ == "pobj"
            and token.head.dep_ == "prep"
            and holder.pos_ in ("NOUN", "PROPN")
            and holder.text != SLOT_STAND_IN
        ):
            owners[description] = owners[description] | frozenset(word_keys([holder.lower_]))
        if token.dep_ not in ("nsubj", "nsubjpass"):
            continue
        verbs = {word.lower_ for word in (token.head, *token.head.children) if word.i != token.i}
        if verbs & _PLURAL_VERBS:
            plural.add(description)
        elif verbs & _SINGULAR_VERBS:
            singular.add(description)
    # "what language is spoken in <fi>a language</fi>": the question asks for what its slot is.
    asks_for = doc[1].lower_ if len(doc) > 1 and doc[0].lower_ in ("what", "which") else None
    broken = None
    # "do" that is the main verb ("what is there to do", "who did the voice of") supports none.
    support = next(
        (
            token
            for token in doc
            if token.lower_ in _DO_SUPPORT
            and doc[max(token.i - 1, 0)].lower_ != "to"
            and not any(c.dep_ == "dobj" and c.text != SLOT_STAND_IN for c in token.children)
        ),
        None,
    )
    said = {token.lower_ for token in own}
    if (
        support is not None
        and doc[0].lower_ in _QUESTION_WORDS
        and not any(token.tag_.startswith("VB") for token in doc[support.i + 1 :])
        # The small parser often tags a lower-case verb as a noun ("do <fi>a people</fi> use"):
        # only a question ending on its slot has surely lost its verb.
        and [token for token in doc if not token.is_punct][-1].text == SLOT_STAND_IN
    ):
        broken = f'the template has no verb after "{support.text}"'
    elif (
        doc[0].lower_ in _QUESTION_WORDS
        and "to" not in said
        and not any(token.tag_ in _FINITE_VERB_TAGS for token in own)
    ):
        broken = "the template's question has no finite verb"
    elif doc[0].lower_ in _GREETINGS:
        broken = "a greeting asks nothing a passage answers"
    elif asks_for in {d.split(" ", 1)[-1] for d in descriptions} and not said & _CHOICE:
        broken = f"the template asks which {asks_for} and names one in its slot"
    elif said & _COMPARING and len(set(descriptions)) == 1 and not said & _SECOND_THING:
        broken = "the template compares one thing"
    elif intent(doc) in _NOT_ANSWERED_BY_A_COPY:
        broken = "a passage copied word for word does not write or rewrite what the template asks"
    relations = tuple(w for w in words(fixed_text(template)) if w in _PLACE_RELATIONS)
    return _TemplateReading(
        lemmas,
        roles,
        relations,
        frozenset(plural),
        frozenset(singular),
        owners,
        frozenset(performers),
        broken,
    )


def _root(value: str):
    """The syntactic head of a value parsed alone (its first sentence's root)."""
    return next(iter(parse(value).sents)).root


@lru_cache(maxsize=1 << 12)
def names_many(value: str) -> bool:
    """Whether a value is a plural common noun ("NFL teams", "Afroasiatic languages"); a plural
    name ("the United States") is one thing."""
    root = _root(value)
    return root.tag_ == "NNS" and root.text.islower()


@lru_cache(maxsize=1 << 12)
def reads_as_plural(value: str) -> bool:
    """Whether a value names many: a plural noun ("Armenians", "the Jews"), or a people by its
    adjective ("the Chinese")."""
    root = _root(value)
    return (
        "Plur" in root.morph.get("Number")
        or root.tag_ in ("NNS", "NNPS")
        or root.lower_.endswith("ese")
        or (value.lower().startswith("the ") and root.lower_.endswith(_PEOPLE_ADJECTIVE))
    )


def _between(a, b) -> list | None:
    """The tokens on the dependency path between tokens `a` and `b`, endpoints excluded; None
    when they are in different sentences (no common ancestor)."""
    up_a = [a, *a.ancestors]
    up_b = [b, *b.ancestors]
    on_b = {token.i for token in up_b}
    common = next((token for token in up_a if token.i in on_b), None)
    if common is None:
        return None
    below_a = up_a[1 : [t.i for t in up_a].index(common.i)]
    below_b = up_b[1 : [t.i for t in up_b].index(common.i)]
    return below_a + below_b + ([common] if common.i not in (a.i, b.i) else [])


# Every template matched to a passage reads the same runs of its sentences: computed once a run.
@lru_cache(maxsize=256)
def _run_tokens(text: str, run: tuple[_Sentence, ...]) -> tuple[list, list[str], frozenset[int]]:
    """The parsed tokens of a run of sentences, their word keys, and the indices of the tokens
    inside a filler span: other values stand where the template's slots do ("the Chrysler
    Building in New York City was finished" ties the city to "finished" through the building)."""
    doc = parse_document(text)
    window = doc.char_span(run[0].start, run[-1].end, alignment_mode="expand")
    tokens = list(window) if window is not None else []
    keys = word_keys([token.lower_ for token in tokens])
    index = _filler_index(text)
    first, last = bisect_left(index.starts, run[0].start), bisect_left(index.starts, run[-1].end)
    in_values = frozenset(
        token.i
        for start, end, *_ in index.spans[first:last]
        for token in doc.char_span(start, end, alignment_mode="expand") or ()
    )
    return tokens, keys, in_values


def _linked(
    text: str, run: tuple[_Sentence, ...], needed: set[str], lemmas: frozenset[str]
) -> Callable[[str], bool]:
    """Whether the passage's parse ties a mention of a value in the run to one of the template's
    words (`needed` keys): the path between them passes through at most MAX_LINK_TOKENS tokens,
    each a word of the template (`lemmas`) or punctuation; given the `role` its slot plays in the
    template, a mention playing the other role does not count; given `owners`, the keys of the
    noun that holds the slot in the template ("the capital of <fi>a country</fi>"), the value
    must be what has that noun ("the capital of France", "Italy's capital", "France has a
    capital"), not be it ("Paris, the capital of France", "Denver is the capital of Colorado"),
    and the passage must not call the noun former."""
    doc = parse_document(text)
    tokens, keys, in_values = _run_tokens(text, run)
    # "play a key role in" is not the acting a template's "play" asks about, unless it says so.
    idiom_counts = bool(lemmas & IDIOM_OBJECTS)
    targets = [
        (token, key)
        for token, key in zip(tokens, keys, strict=True)
        if key in needed and (idiom_counts or not plays_a_part(token))
    ]

    locative = bool(lemmas & _LOCATIVE)
    former = bool(lemmas & _FORMER)

    def allowed(token) -> bool:
        return (
            token.is_punct
            or token.i in in_values
            or token.lower_ in lemmas
            or token.lemma_.lower() in lemmas
            or (locative and token.dep_ == "prep" and token.lower_ in _LOCATIVE)
        )

    def linked(surface: str, role: str | None = None, owners: frozenset[str] = frozenset()) -> bool:
        for _, start, end in _occurrences(text, run, surface):
            span = doc.char_span(start, max(end, start + 1), alignment_mode="expand")
            if span is None:
                continue
            found = _role(span.root)
            if role is not None and found is not None and found != role:
                continue
            inside = range(span.start, span.end)
            for target, key in targets:
                if target.i in inside:
                    continue
                if _owns(span.root, target):
                    return True
                if owners:
                    # Only "the N of X" and "X's N" say the N of X, and "the former N of X"
                    # says it no more, unless the template asks about a former one.
                    if (
                        key in owners
                        and _held_by(span.root, target)
                        and (former or not _was(target))
                    ):
                        return True
                    continue
                path = _between(span.root, target)
                if path is not None and len(path) <= MAX_LINK_TOKENS and all(map(allowed, path)):
                    return True
        return False

    return linked


def _held_by(value, noun) -> bool:
    """Whether a value's head (or the first of the conjuncts it is one of) is the object of a
    preposition that hangs on the noun `noun` ("the capital of X"), or its possessor ("X's
    capital")."""
    while value.dep_ in ("conj", "appos") and value.head.i != value.i:
        value = value.head
    if value.dep_ == "poss":
        return value.head.i == noun.i
    return value.dep_ == "pobj" and value.head.dep_ == "prep" and value.head.head.i == noun.i


def _was(noun) -> bool:
    """Whether a noun is said to be what it was once: "the former imperial capital"."""
    return any(child.lower_ in _FORMER for child in noun.children)


def _owns(value, noun) -> bool:
    """Whether a value's head is the subject of "have" with the noun `noun` as its object
    ("Australia has a capital"): it ties them as "of" does."""
    return (
        noun.pos_ in ("NOUN", "PROPN")
        and noun.dep_ == "dobj"
        and noun.head.lemma_ == "have"
        and value.dep_ == "nsubj"
        and value.head.i == noun.head.i
    )


def _defines(sentence: str, value: str) -> bool:
    """Whether a sentence is about `value`: it opens with it, or says what it is."""
    name = re.escape(value)
    return bool(
        re.search(
            rf"^\W*(?:the\s+)?{name}(?!\w)|(?<!\w){name}\s+(?:is|was|are|were)\b",
            sentence,
            re.IGNORECASE,
        )
    )


def _is_a_subject(kind: str) -> bool:
    """Whether a filler of `kind` can be what a passage is about: a name or a topic, not a
    number or a date."""
    return kind in _NAMED_KINDS or kind in _TOPIC_KINDS or kind.startswith("a kind of ")


def kind_fits(description: str, kind: str, similarity: float) -> bool:
    """Whether a filler of `kind` may stand in a slot of `description`: the same kind; a generic
    description's family (a named entity, a topic); or, for a description in other words, a kind
    at MIN_KIND_SIMILARITY or closer."""
    if description == kind:
        return True
    if description.startswith("a kind of ") and kind.startswith("a kind of "):
        # "a kind of war" and "a kind of land" read alike; only the head noun tells them apart.
        return False
    if description == ENTITY_DESCRIPTION:
        return kind in _NAMED_KINDS
    if description == TOPIC_DESCRIPTION:
        return kind in _TOPIC_KINDS or kind.startswith("a kind of ")
    if description in _NAMED_KINDS and kind.startswith("a kind of "):
        # "a city or country" wants a name, not "populous city".
        return False
    return similarity >= MIN_KIND_SIMILARITY


@dataclass(frozen=True)
class _Sentence:
    start: int
    end: int
    n_words: int
    keys: frozenset[str]


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _sentences(text: str) -> tuple[_Sentence, ...]:
    """The sentences of a text with their word counts and word keys, computed once: the
    templates matched to a document share them."""
    return tuple(
        _Sentence(
            start, end, len(text[start:end].split()), frozenset(word_keys(words(text[start:end])))
        )
        for start, end in sentence_spans(text)
    )


def _excerpt_around(sentences: tuple[_Sentence, ...], first: int, last: int) -> tuple[int, int]:
    """The character span of the excerpt grown from sentences `first`..`last`: forward while
    under ANSWER_TARGET_WORDS (what follows a sentence usually explains it), then back."""
    total = sum(s.n_words for s in sentences[first : last + 1])
    while total < ANSWER_TARGET_WORDS and last + 1 < len(sentences):
        last += 1
        total += sentences[last].n_words
    while total < ANSWER_TARGET_WORDS and first > 0:
        first -= 1
        total += sentences[first].n_words
    return sentences[first].start, sentences[last].end


def _as_excerpt(passage: str) -> str:
    tokens = list(re.finditer(r"\S+", passage))
    if len(tokens) < EXCERPT_MARKER_MIN_WORDS:
        return passage
    # Head and tail are copied character for character: the span they mark must be found.
    head = passage[: tokens[EXCERPT_MARKER_EDGE_WORDS - 1].end()]
    tail = passage[tokens[-EXCERPT_MARKER_EDGE_WORDS].start() :]
    return f"{EXCERPT_OPEN}{head}{EXCERPT_ELLIPSIS}{tail}{EXCERPT_CLOSE}"


@dataclass(frozen=True)
class _FillerIndex:
    """The usable fillers of a text with their offsets, sorted by start: the templates matched
    to one document look up the fillers of many runs of its sentences."""

    starts: tuple[int, ...]
    spans: tuple[tuple[int, int, str, str], ...]  # start, end, surface, kind

    def between(self, start: int, end: int) -> list[tuple[str, str]]:
        """(surface, kind) of the fillers inside text[start:end], in order, each surface once."""
        found: dict[str, str] = {}
        for at in range(bisect_left(self.starts, start), bisect_left(self.starts, end)):
            _, span_end, surface, kind = self.spans[at]
            if span_end <= end:
                found.setdefault(surface, kind)
        return list(found.items())


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _filler_index(text: str) -> _FillerIndex:
    spans = [
        (start, end, text[start:end], kind)
        for start, end, kind in filler_spans(text)
        if usable_filler(text[start:end])
    ]
    return _FillerIndex(tuple(span[0] for span in spans), tuple(spans))


def _fillers(text: str, start: int, end: int) -> list[tuple[str, str]]:
    return _filler_index(text).between(start, end)


def _head(surface: str) -> str:
    """The key of a value's last word: "the Eiffel Tower" is "the tower" again later on."""
    found = words(surface)
    return word_keys(found[-1:])[0] if found else ""


def _head_fits(description: str, surface: str) -> bool:
    """Whether a value may fill "a kind of X" by its words: a name, or a phrase whose head is an
    X ("NFL teams" for "a kind of team"), not another common thing ("Tallapoosa rivers" for "a
    kind of tribe", which the embedding of a people's kind lets through)."""
    if not description.startswith("a kind of "):
        return True
    head = surface.split()[-1]
    wanted = description.removeprefix("a kind of ").split()[-1]
    return not head.islower() or word_keys([head.lower()]) == word_keys([wanted.lower()])


def _assign(
    descriptions: list[str],
    fillers: list[tuple[str, str]],
    salience: dict[str, int],
    embed: Embed,
    about_the_value: bool = False,
    tied: Callable[[str, str], bool] | None = None,
) -> dict[str, str] | None:
    """One distinct filler per distinct description, of a kind that fits it, best first (greedy):
    the similarity of its kind to the description plus SALIENCE_WEIGHT per time the excerpt names
    it (`salience`, counted up to MAX_SALIENCE), ties to the filler that comes first. None when a
    description finds none. With `about_the_value` (a template that asks about its values alone)
    the most salient filler of a fitting kind comes first: the excerpt must be about it. With
    `tied`, a filler fills a description only where `tied(description, surface)` holds."""
    kinds = list(dict.fromkeys(kind for _, kind in fillers))
    vectors = embed(descriptions + kinds)
    similarity_of = {
        (description, kind): float(vectors[i] @ vectors[len(descriptions) + j])
        for i, description in enumerate(descriptions)
        for j, kind in enumerate(kinds)
    }
    options = sorted(
        (
            (
                -salience[surface] if about_the_value else 0,
                -similarity_of[description, kind]
                - SALIENCE_WEIGHT * min(salience[surface], MAX_SALIENCE),
                column,
                row,
            )
            for row, description in enumerate(descriptions)
            for column, (surface, kind) in enumerate(fillers)
            if kind_fits(description, kind, similarity_of[description, kind])
            and _head_fits(description, surface)
            and (tied is None or tied(description, surface))
        )
    )
    value_of: dict[str, str] = {}
    used: set[int] = set()
    for *_, column, row in options:
        if descriptions[row] in value_of or column in used:
            continue
        value_of[descriptions[row]] = fillers[column][0]
        used.add(column)
    return value_of if len(value_of) == len(descriptions) else None


def rules_instantiate(
    template: str,
    chunk: str,
    embed: Embed,
    anchor: float = 0.0,
    document: str | None = None,
    reach: tuple[int, int] | None = None,
) -> str:
    """The instantiator output for `template` and the matched passage `chunk` of `document` (by
    default the passage is all there is), read within `reach`, the character span of the document
    a model would read around the passage (by default all of it); see the module docstring: JSON `{"instruction", "answer"}`, or `null` and the reason when the template
    has no slot, the passage is too short to answer, or no run of its sentences carries the
    template's words, a filler of the right kind for every slot and what a question asks for.
    `anchor` is where in the passage (0..1) the template matched, `embed` maps texts to unit
    vectors. Deterministic."""
    descriptions = list(dict.fromkeys(slot_descriptions(template)))
    if not descriptions:
        return "null: the template has no slot to fill"
    if all(description in _NUMBERS | _TIMES for description in descriptions):
        # "Summarize for a <fi>a length of time</fi> old": a number or a date says nothing of
        # what a passage is about, so no passage is what such a template asks about.
        return "null: the template's slots are numbers or dates, which name no subject"
    text = document or chunk
    if len(chunk.split()) < MIN_ANSWER_WORDS or not sentence_spans(chunk):
        return "null: the passage is too short to answer from"
    offset = max(text.find(chunk), 0)
    sentences = _sentences(text)
    own_words = template_words(template)
    needed = set(word_keys(list(own_words)))
    value_alone = asks_about_the_value_alone(template)
    if not needed and not value_alone:
        return "null: the template's own words say nothing the passage could be checked for"
    reading = _template_reading(template)
    if reading.broken:
        return f"null: {reading.broken}"
    asked = asked_kind(template)
    at = offset + anchor * len(chunk)
    chunk_end = offset + len(chunk)
    # A template that asks about its value alone is answered from the passage itself; one with
    # words of its own from wherever in reach the passage's document says them.
    low, high = (offset, chunk_end) if value_alone else (reach or (0, len(text)))
    starts = [sentence.start for sentence in sentences]
    # Nearest to the anchor first; inside the passage before the text around it.
    order = sorted(
        range(bisect_left(starts, low), bisect_left(starts, high)),
        key=lambda i: (
            not (offset <= sentences[i].start < chunk_end),
            abs(sentences[i].start - at),
            i,
        ),
    )
    reason = (
        f"no {WINDOW_SENTENCES} sentences of the passage say "
        f"{_listing([*template_words(template), *reading.relations])}"
    )
    for first in order:
        last = min(first + WINDOW_SENTENCES, len(sentences)) - 1
        run = sentences[first : last + 1]
        said = frozenset().union(*(s.keys for s in run))
        if not needed <= said or (reading.relations and not said & _NEIGHBOURING):
            continue
        start, end = _excerpt_around(sentences, first, last)
        excerpt = text[start:end]
        if len(excerpt.split()) < MIN_ANSWER_WORDS:
            reason = "the passage is too short to answer from"
            continue
        in_run = _fillers(text, run[0].start, run[-1].end)
        # A value named elsewhere in the excerpt or the passage is in the run when the run
        # speaks of it again by its last word ("the tower" after "the Eiffel Tower").
        fillers = in_run + [
            filler
            for filler in _fillers(text, min(start, offset), max(end, chunk_end))
            if filler not in in_run and _head(filler[0]) in said
        ]
        if needed:
            # A value stands where the passage speaks of what the template asks: within
            # MAX_GAP_CHARS of one of its words, in the same sentence, and tied to it as the
            # template ties them.
            near = _near_words(text, run, needed)
            linked = _linked(text, run, needed, reading.lemmas)
            fillers = [
                filler
                for filler in fillers
                # "where is Spanish-based BBVA based?" answers itself.
                if not needed & set(word_keys(words(filler[0])))
                and near(filler[0])
                and linked(filler[0])
            ]
        excerpt_keys = word_keys(words(excerpt))
        salience = {surface: excerpt_keys.count(_head(surface)) for surface, _ in fillers}
        # Each slot takes only a value the passage ties to the template's words as the template
        # ties that slot: by its role, and as what has the noun that holds it.
        tied = partial(_tied, reading, linked, dict(fillers)) if needed else None
        value_of = (
            _assign(descriptions, fillers, salience, embed, value_alone, tied) if fillers else None
        )
        if value_of is None:
            reason = f"no span of the passage fits {_listing(descriptions)} where it says so"
            continue
        kind_of = dict(fillers)
        values = set(value_of.values())
        if asked is not None and value_alone and _answered_by_the_value(asked[0], kind_of, values):
            # "who is X", "where is Paris": X is the person or place the excerpt is about.
            if not all(kind_of[value] in _NAMED_KINDS for value in values):
                reason = f"the value asked about is not {asked[0]}"
                continue
        elif asked is not None:
            # What the question asks for stands next to what it asks about: "born" next to
            # the place, not a place two clauses away; and it is not part of a value ("who
            # wrote Huxley's book?" does not ask for Huxley).
            what, kinds = asked
            called = [v for v in values if _called_what_is_asked(text, run, v, needed)]
            if what == "a person" and called:
                reason = (
                    f'the passage calls {called[0]} "{" ".join(own_words)}": the value is what '
                    "the question asks for"
                )
                continue
            close = _near_words(text, run, needed) if needed else lambda _surface: True
            if not any(
                kind in kinds and not any(surface in value for value in values) and close(surface)
                for surface, kind in in_run
            ):
                reason = f"the passage does not give {what} where it says so"
                continue
        # A number or a date is a detail of a passage, never what it is about; what it is about
        # opens its first sentence, or that sentence says what it is ("Alabama is a state").
        opening = text[run[0].start : run[0].end]
        if value_alone and not all(
            salience[value] >= MIN_MENTIONS_OF_A_SOLE_VALUE
            and _is_a_subject(kind_of[value])
            and _defines(opening, value)
            for value in value_of.values()
        ):
            reason = "the excerpt is not about the value the template asks about"
            continue
        if needed and not _all_words_near_values(text, run, needed, list(value_of.values())):
            reason = f"the passage does not say {_listing(own_words)} next to the values"
            continue
        if not all(reads_as_plural(value_of[d]) for d in reading.plural if d in value_of):
            reason = "a value is singular where the template's verb asks for many"
            continue
        if any(names_many(value_of[d]) for d in reading.singular if d in value_of):
            reason = "a value names many where the template's verb asks for one"
            continue
        if not template.startswith(FI_OPEN):
            # Inside a sentence a value's article is lower-case: "is the Eiffel Tower".
            value_of = {
                d: _ARTICLE_START.sub(lambda m: m.group().lower(), v) for d, v in value_of.items()
            }
        instruction = fill_slots(template, value_of)
        answer = _as_excerpt(excerpt)
        opener = words(instruction)[:1]
        if not opener or opener[0] not in QUESTION_OPENERS:
            # A request ("Write ...", "List ...") is answered by the passage, introduced as such.
            answer = f"{REQUEST_LEAD}\n\n{answer}"
        return json.dumps({"instruction": instruction, "answer": answer}, ensure_ascii=False)
    # The parser reads any output without a JSON object as `null`: the reason must not open one.
    return "null: " + reason.replace("{", "(").replace("}", ")")


def _listing(items: list[str]) -> str:
    shown = [f'"{item}"' for item in items[:4]]
    return ", ".join(shown) + (f" and {len(items) - 4} more" if len(items) > 4 else "")


def rules_instantiate_all(
    items: list[tuple[str, str, float, str, tuple[int, int] | None]], embed: Embed
) -> list[str]:
    """`rules_instantiate` of many (template, chunk, anchor, document, reach) items, with every
    slot description and filler kind embedded in one batched call rather than one small call
    each."""
    cached = MemoizedEmbed(embed)
    documents = list(dict.fromkeys(item[3] or item[1] for item in items))
    parse_documents(documents)
    texts = []
    for document in documents:
        texts += sorted({span[3] for span in _filler_index(document).spans})
    for template, *_ in items:
        texts += slot_descriptions(template)
    cached.prefetch(texts)
    return [rules_instantiate(template, chunk, cached, *rest) for template, chunk, *rest in items]
