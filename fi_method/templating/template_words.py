"""What a template says itself, apart from its slots: the words a passage must say for the
template to be asked of it (the rules instantiator) and that an answer must address (the rules
judge). One definition for both roles, so that they agree on what a template asks."""

from __future__ import annotations

from functools import lru_cache

from fi_method.templating.rules_genericizer import REQUEST_VERBS, parse
from fi_method.templating.templates import fill_slots, fixed_text, slot_descriptions
from fi_method.text import words

QUESTION_OPENERS = frozenset(
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

# Parts of speech that say what a template asks about; the rest (auxiliaries, pronouns,
# prepositions, determiners) say how it asks.
_CONTENT_POS = frozenset({"NOUN", "PROPN", "VERB", "ADJ", "NUM"})
# Content words that say how a template asks, not what about: "how many" is read as asking for
# a number, "what is X known for" and "where is X located" as asking about X.
_GENERIC_WORDS = frozenset({"many", "much", "known", "famous", "located", "mean", "meaning"})
# Words that leave a template asking about its slot value alone: "what is X", "explain X",
# "tell me about X", "where is X located".
_ABOUT_THE_VALUE_ALONE = REQUEST_VERBS | frozenset(
    {"what", "who", "where", "is", "are", "was", "were", "the", "a", "an", "me", "about"}
    | {"please", "of", "you", "i", "know", "does", "for", "do", "did", "have", "heard", "ever"}
    | _GENERIC_WORDS
)
# Verbs that ask the reader what they know ("do you know X?", "have you heard of X?"): with
# "you" as their subject they say how a template asks, and a passage need not say them.
_ASKING_THE_READER = frozenset({"know", "hear", "remember"})
# What stands for a slot while a template is parsed: a name, as slot values mostly are.
SLOT_STAND_IN = "Xanadu"


# Templates recur across a shard's matches; what they say is small to keep.
@lru_cache(maxsize=1 << 16)
def template_words(template: str) -> tuple[str, ...]:
    """The template's own content words, each once: the nouns, verbs, adjectives and numbers of
    its text outside the slots (parsed with a name in each slot), request verbs and question
    words aside."""
    descriptions = slot_descriptions(template)
    parsed = parse(fill_slots(template, dict.fromkeys(descriptions, SLOT_STAND_IN)))
    return tuple(
        dict.fromkeys(
            token.lower_
            for token in parsed
            if token.pos_ in _CONTENT_POS
            and token.text != SLOT_STAND_IN
            and token.lower_ not in REQUEST_VERBS | QUESTION_OPENERS | _GENERIC_WORDS
            and not _asks_the_reader(token)
        )
    )


def _asks_the_reader(token) -> bool:
    return token.lemma_.lower() in _ASKING_THE_READER and any(
        child.dep_ == "nsubj" and child.lower_ == "you" for child in token.children
    )


@lru_cache(maxsize=1 << 16)
def asks_about_the_value_alone(template: str) -> bool:
    """Whether the template asks about one slot value and nothing else ("what is X", "explain
    X"): a question word or request verb, and otherwise only words that say how it asks. Then
    the excerpt must be about that value. A template of slots and linking words alone ("<fi>a
    topic</fi> of <fi>a group</fi>") asks nothing."""
    said = words(fixed_text(template))
    return (
        len(set(slot_descriptions(template))) == 1
        and any(word in QUESTION_OPENERS or word in REQUEST_VERBS for word in said)
        and all(word in _ABOUT_THE_VALUE_ALONE for word in said)
    )
