import pytest

from fi_method.templating.templates import (
    FI_CLOSE,
    FI_OPEN,
    TemplateError,
    count_tags,
    slot_descriptions,
    validate_template,
)

QUERY = "What effects does depression have on sleep?"
DOCUMENT = "An article about a medical or psychological condition and how it affects the body."


def _reason(template: str, document: str = DOCUMENT, query: str = QUERY) -> str:
    with pytest.raises(TemplateError) as caught:
        validate_template(template, document, query)
    return caught.value.reason


def test_tag_constants_are_the_paper_markup():
    assert (FI_OPEN, FI_CLOSE) == ("<fi>", "</fi>")


def test_slot_descriptions_in_order_with_repeats_and_stripped():
    template = "Compare <fi> a city </fi> and <fi>another city</fi>: is <fi>a city</fi> bigger?"
    assert slot_descriptions(template) == ["a city", "another city", "a city"]
    assert count_tags(template) == 3


def test_no_tags_gives_no_descriptions():
    assert slot_descriptions("what is love?") == []
    assert count_tags("what is love?") == 0


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("what does </fi> do?", "unbalanced_tags"),
        ("what does <fi>a drug do?", "unbalanced_tags"),
        ("what does <fi>a drug</fi> do to </fi>?", "unbalanced_tags"),
        ("what does <fi>a <fi>drug</fi></fi> do?", "nested_tags"),
        ("what does <fi>  </fi> do?", "empty_slot_description"),
    ],
)
def test_grammar_errors_raise_with_reason(template, reason):
    with pytest.raises(TemplateError) as caught:
        slot_descriptions(template)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)
    assert _reason(template) == reason


def test_valid_template_passes():
    validate_template(
        "What effects does <fi>a medical or psychological condition</fi> have on sleep?",
        DOCUMENT,
        QUERY,
    )


def test_repeated_descriptions_are_valid():
    validate_template(
        "Why is <fi>a programming language</fi> slow, and how can <fi>a programming language</fi> "
        "code be made faster?",
        "A guide about the performance of a programming language.",
        "Why is Python slow, and how can Python code be made faster?",
    )


def test_template_without_tags_is_rejected():
    assert _reason("What effects does a condition have on sleep?") == "no_tags"


def test_empty_document_description_is_rejected():
    assert _reason("What effects does <fi>a condition</fi> have?", document=" \n ") == (
        "empty_document_description"
    )


def test_slots_wrapping_the_query_words_are_rejected():
    template = "What effects does <fi>Depression</fi> have on sleep"
    assert _reason(template) == "template_equals_query"


def test_grammar_is_checked_before_content():
    assert _reason("what does </fi> do?", document="") == "unbalanced_tags"
