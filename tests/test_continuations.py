"""Halving and completion: a document is cut at the sentence boundary nearest its middle without
losing a word, a teacher sees the end of a long first half starting at a sentence, and the
teacher's prompt is a system message and the text to continue."""

import pytest

from fi_method.synthesis.continuations import (
    MAX_PROMPT_CHARS,
    build_messages,
    halve,
    teacher_prompt,
)

# The middle is character 66.5; the boundaries are at 27, 95 and 110: 95 is nearest, after it.
MUSEUM_FIRST = (
    "The museum opened in 1901. It holds over ten thousand paintings and drawings by local artists."
)
MUSEUM_SECOND = "Entry is free. Guided tours run daily."
MUSEUM = f"{MUSEUM_FIRST} {MUSEUM_SECOND}"
# The middle is character 59.5; the boundaries are at 11 and 30: 30 is nearest, before it.
CLOSING_FIRST = "Short one. Another short one."
CLOSING_SECOND = (
    "Then a very much longer closing sentence that carries most of the characters in the text."
)
CLOSING = f"{CLOSING_FIRST} {CLOSING_SECOND}"


@pytest.mark.parametrize(
    ("document", "first", "second"),
    [
        (MUSEUM, MUSEUM_FIRST, MUSEUM_SECOND),
        (CLOSING, CLOSING_FIRST, CLOSING_SECOND),
        # Boundaries at 4 and 8 are equally far from the middle (6): the earlier one wins.
        ("Aa. Bb. Ccc.", "Aa.", "Bb. Ccc."),
        # A paragraph break is a boundary too, even after a heading without a full stop.
        (
            "A heading without a stop\n\nThe body starts here and runs on for quite a while longer.",
            "A heading without a stop",
            "The body starts here and runs on for quite a while longer.",
        ),
    ],
)
def test_halve_cuts_at_the_sentence_boundary_nearest_the_middle(document, first, second):
    assert halve(document) == (first, second)


def test_a_one_sentence_document_is_cut_at_the_space_nearest_the_middle():
    # The middle is character 22.5; the nearest spaces are at 25 and 17.
    document = "a single sentence without any boundary at all"
    assert halve(document) == ("a single sentence without", "any boundary at all")


@pytest.mark.parametrize(
    "document",
    [
        MUSEUM,
        CLOSING,
        "a single sentence without any boundary at all",
        "Title\n\nFirst line of the body. Second line!\nThird line? Yes.\n\nThe end.",
        "  Leading and trailing spaces. Are stripped from both halves.  ",
    ],
)
def test_halves_joined_with_a_space_keep_every_word_in_order(document):
    first, second = halve(document)
    assert first and second
    assert first == first.strip() and second == second.strip()
    assert f"{first} {second}".split() == document.split()


@pytest.mark.parametrize("document", ["Supercalifragilistic", ""])
def test_a_document_without_any_boundary_keeps_everything_in_the_first_half(document):
    assert halve(document) == (document, "")


# --- teacher prompt -------------------------------------------------------------------------

LONG_FIRST_HALF = " ".join(f"Sentence {i:03d} is about topic {i:03d}." for i in range(200))


def test_a_short_first_half_is_the_prompt_as_it_is():
    assert teacher_prompt(MUSEUM) == MUSEUM
    exactly_full = "x" * MAX_PROMPT_CHARS
    assert teacher_prompt(exactly_full) == exactly_full


def test_a_long_first_half_keeps_its_end_from_a_sentence_start():
    prompt = teacher_prompt(LONG_FIRST_HALF, max_chars=100)
    assert len(prompt) <= 100
    assert LONG_FIRST_HALF.endswith(prompt)
    assert prompt.startswith("Sentence ")
    assert LONG_FIRST_HALF[: -len(prompt)].endswith(". ")
    # The earliest sentence start that fits: one sentence more would not.
    sentence = len("Sentence 000 is about topic 000. ")
    assert len(prompt) + sentence > 100


def test_a_long_first_half_without_sentence_starts_keeps_its_last_max_chars():
    text = " ".join(f"word{i}" for i in range(100))
    prompt = teacher_prompt(text, max_chars=60)
    assert prompt == text[-60:]


def test_the_default_window_cuts_a_very_long_first_half():
    text = " ".join([LONG_FIRST_HALF] * 3)
    assert len(text) > MAX_PROMPT_CHARS
    prompt = teacher_prompt(text)
    assert len(prompt) <= MAX_PROMPT_CHARS
    assert text.endswith(prompt) and prompt.startswith("Sentence ")


# --- messages -------------------------------------------------------------------------------


def test_teacher_messages_are_a_system_message_and_the_prompt():
    prompt = teacher_prompt(MUSEUM)
    messages = build_messages(prompt)
    assert [message["role"] for message in messages] == ["system", "user"]
    assert "Continue" in messages[0]["content"]
    assert messages[1]["content"] == prompt
