"""Excerpt markers expand to the unique document span; the ratio measures verbatim copying."""

import pytest

from fi_method.synthesis.excerpts import ExcerptError, excerpt_ratio, expand_excerpts

DOCUMENT = (
    "Anarchism is a political philosophy that advocates self-governed societies based on "
    "voluntary institutions. These are often described as stateless societies. Anarchism "
    "considers the state to be undesirable, unnecessary, and harmful."
)


def test_markers_expand_to_the_unique_span():
    answer = "In short: <excerpt>Anarchism is a political<...>voluntary institutions.</excerpt>"
    assert expand_excerpts(answer, DOCUMENT) == (
        "In short: Anarchism is a political philosophy that advocates self-governed societies "
        "based on voluntary institutions."
    )
    assert (
        expand_excerpts("<excerpt>stateless societies</excerpt>", DOCUMENT) == "stateless societies"
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("<excerpt>Anarchism<...>.</excerpt>", "excerpt_ambiguous"),
        ("<excerpt>Monarchy is<...>harmful.</excerpt>", "excerpt_not_found"),
        ("<excerpt>a quote that is not there</excerpt>", "excerpt_not_found"),
        ("<excerpt><...>harmful.</excerpt>", "malformed_excerpt"),
        ("<excerpt>Anarchism is a political<...>voluntary", "malformed_excerpt"),
    ],
)
def test_bad_markers_reject_with_a_reason(answer, reason):
    with pytest.raises(ExcerptError) as error:
        expand_excerpts(answer, DOCUMENT)
    assert error.value.reason == reason


def test_excerpt_ratio_counts_verbatim_runs_only():
    copied = "Anarchism considers the state to be undesirable, unnecessary, and harmful."
    assert excerpt_ratio(copied, DOCUMENT) == 1.0
    mixed = "My view: " + copied
    assert 0.8 < excerpt_ratio(mixed, DOCUMENT) < 1.0
    assert (
        excerpt_ratio("The state is a useful and necessary institution for everyone.", DOCUMENT)
        == 0.0
    )
    assert excerpt_ratio("stateless societies.", DOCUMENT) == 1.0
    assert excerpt_ratio("", DOCUMENT) == 0.0
