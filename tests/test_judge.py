"""Stage D, the judge: Flow Judge's prompt, the parser on noisy judge outputs, the `rules` judge's
spread over good, weak and off-topic pairs, and the collection of judgements into rows, rejects
and the funnel."""

import pytest

from fi_method.judge import (
    RUBRIC,
    Judgement,
    build_messages,
    coverage,
    format_output,
    parse_output,
    repetition,
    rules_judge,
)
from fi_method.llm_output import OutputParseError
from fi_method.pairs import FUNNEL_STAGES, collect_judgements, funnel

# --- prompt ---------------------------------------------------------------------------------


def test_prompt_holds_the_pair_the_rubric_and_the_output_format():
    instruction = "When was the Tower Bridge in London opened?"
    answer = "The bridge was opened on 30 June 1894 by the Prince of Wales."
    [message] = build_messages(instruction, answer)
    assert message["role"] == "user"
    content = message["content"]
    assert f"<query>\n{instruction}\n</query>" in content
    assert f"<output>\n{answer}\n</output>" in content
    rubric = RUBRIC.splitlines()
    assert rubric[0].startswith("- Score 1:") and rubric[0] in content
    assert rubric[-1].startswith("- Score 5:") and rubric[-1] in content
    assert "<feedback>" in content and "<score>" in content
    assert content.index("<feedback>") < content.index("<score>", content.index("<feedback>"))


# --- output parser --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score", "feedback"),
    [
        ("<feedback>Direct and complete.</feedback>\n<score>5</score>", 5, "Direct and complete."),
        (
            "Here is my evaluation.\n<feedback>\nMostly there.\n</feedback>\n\n<score>4</score>\n",
            4,
            "Mostly there.",
        ),
        ("<feedback>Vague.</feedback>\n<score>3", 3, "Vague."),
        ("<feedback>Cut short, no closing tag\n<score>2</score>", 2, "Cut short, no closing tag"),
        ("<feedback>Fine.</feedback><score> 4 </score>", 4, "Fine."),
        ("<feedback>Fine.</feedback><score>4/5</score>", 4, "Fine."),
        ("<feedback>Fine.</feedback><score>\n4 / 5\n</score>", 4, "Fine."),
        ("<score>1</score>", 1, ""),
        ("<feedback>Fine.</feedback><score>4\n\nThanks for reading", 4, "Fine."),
    ],
)
def test_parser_reads_score_and_feedback_from_noisy_output(text, score, feedback):
    assert parse_output(text) == Judgement(score, feedback)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<feedback>Looks good.</feedback>", "no_score"),
        ("Score: 4", "no_score"),
        ("", "no_score"),
        ("<feedback>Good.</feedback><score>four</score>", "no_score"),
        ("<feedback>Good.</feedback><score>4.5</score>", "no_score"),
        ("<feedback>Great!</feedback><score>7</score>", "score_out_of_range"),
        ("<feedback>Awful.</feedback><score>0</score>", "score_out_of_range"),
    ],
)
def test_parser_failures_carry_a_reason(text, reason):
    with pytest.raises(OutputParseError) as caught:
        parse_output(text)
    assert caught.value.reason == reason


@pytest.mark.parametrize("score", [1, 2, 3, 4, 5])
def test_format_output_round_trips_through_the_parser(score):
    judgement = Judgement(
        score, "It answers the query.\nIt copies 4/5 of the text; no <b>fluff</b>."
    )
    assert parse_output(format_output(judgement)) == judgement


# --- rules judge ----------------------------------------------------------------------------

DOCUMENT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centrepiece of "
    "the 1889 World's Fair. Although initially criticised by some of France's leading artists and "
    "intellectuals for its design, it has since become a global cultural icon of France."
)
INSTRUCTION = "Who built the Eiffel Tower in Paris, and when was the tower built?"
GOOD = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centrepiece of "
    "the 1889 World's Fair."
)
WEAK = {
    "thin": "Gustave Eiffel built the Eiffel Tower in Paris.",
    "invented": (
        "The Eiffel Tower in Paris was built by a team of Roman architects during the fourth "
        "century, using marble quarried in Italy, and the tower was later rebuilt by a French king "
        "after a great fire had destroyed most of it."
    ),
    "repetitive": "The Eiffel Tower was built in Paris. " * 6,
    "copied but repeated": (
        "It is named after the engineer Gustave Eiffel, whose company designed and built the "
        "tower. "
    )
    * 3
    + "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
}
OFF_TOPIC = (
    "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria, which gives "
    "the loaf its sour taste and chewy crumb; bakers feed the starter with flour and water daily."
)


def test_the_good_answer_is_copied_and_of_a_fitting_length():
    assert 30 <= len(GOOD.split()) <= 80
    assert GOOD in DOCUMENT


@pytest.mark.parametrize("weak", list(WEAK), ids=list(WEAK))
def test_rules_scores_fall_from_good_to_weak_to_off_topic(weak):
    good = rules_judge(INSTRUCTION, GOOD, DOCUMENT).score
    poor = rules_judge(INSTRUCTION, WEAK[weak], DOCUMENT).score
    off_topic = rules_judge(INSTRUCTION, OFF_TOPIC, DOCUMENT).score
    assert good > poor > off_topic
    assert good >= 4
    assert off_topic == 1


def test_a_good_pair_gets_full_marks_and_feedback_that_says_why():
    judgement = rules_judge(INSTRUCTION, GOOD, DOCUMENT)
    assert judgement.score == 5
    assert "100% of it is taken from the document" in judgement.feedback


def test_an_answer_that_only_touches_the_topic_scores_two():
    answer = (
        "Paris is the capital of France, famous for its museums and cafés, and visited by "
        "millions of people every single year."
    )
    assert rules_judge(INSTRUCTION, answer, DOCUMENT).score == 2


def test_rules_judgements_parse_back_through_the_judge_parser():
    for answer in [GOOD, OFF_TOPIC, *WEAK.values()]:
        judgement = rules_judge(INSTRUCTION, answer, DOCUMENT)
        assert parse_output(format_output(judgement)) == judgement


@pytest.mark.parametrize(
    ("instruction", "answer", "expected"),
    [
        ("Who built the Eiffel Tower?", "Gustave Eiffel built the tower.", 1.0),
        # Content words match on their first five letters: inflections count.
        ("How are bridges constructed?", "A bridge is built by construction crews.", 1.0),
        ("Who built the Eiffel Tower?", "Sourdough needs flour and water.", 0.0),
        ("Who built the Eiffel Tower?", "The Eiffel family lived in Dijon.", 1 / 3),
        # Nothing but stopwords, request verbs, digits and short words: nothing to cover.
        ("Explain what it is in 2024.", "Anything at all.", 1.0),
    ],
)
def test_coverage_is_the_share_of_query_content_words_the_answer_uses(
    instruction, answer, expected
):
    assert coverage(instruction, answer) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The tower was built in Paris.", 0.0),
        ("a b c a b c", 1 / 4),
        ("go go go go go", 2 / 3),
        ("too short", 0.0),
        ("", 0.0),
    ],
)
def test_repetition_is_the_share_of_repeated_word_trigrams(answer, expected):
    assert repetition(answer) == pytest.approx(expected)


# --- collecting judgements ------------------------------------------------------------------


def pair(pair_id: str) -> dict:
    return {"pair_id": pair_id, "source": "unit"}


def test_collect_keeps_every_judged_pair_and_rejects_low_scores_and_unparseable_outputs():
    pairs = [pair("p1"), pair("p2"), pair("p3"), pair("p4"), pair("p5")]
    outputs = [
        "<feedback>Complete.</feedback><score>5</score>",
        "<feedback>Partial.</feedback><score>3</score>",
        "I think this answer is fine.",
        "<feedback>Good enough.</feedback><score>4</score>",
        "<feedback>Wow.</feedback><score>9</score>",
    ]
    rows, rejects = collect_judgements(pairs, outputs, 4, "rules", "rules-1")
    assert [(r["pair_id"], r["score"], r["kept"]) for r in rows] == [
        ("p1", 5, True),
        ("p2", 3, False),
        ("p4", 4, True),
    ]
    assert rows[1]["feedback"] == "Partial."
    assert all((r["engine"], r["model"]) == ("rules", "rules-1") for r in rows)
    assert [(r["item_id"], r["reason"]) for r in rejects] == [
        ("p2", "low_judge_score"),
        ("p3", "no_score"),
        ("p5", "score_out_of_range"),
    ]
    assert rejects[0]["detail"].startswith("score 3 < 4: Partial.")
    assert all(r["source"] == "unit" for r in rejects)


@pytest.mark.parametrize(("min_score", "kept"), [(1, 3), (3, 2), (4, 1), (5, 1), (6, 0)])
def test_the_kept_flag_follows_min_score(min_score, kept):
    outputs = ["<score>5</score>", "<score>3</score>", "<score>1</score>"]
    rows, rejects = collect_judgements(
        [pair("a"), pair("b"), pair("c")], outputs, min_score, "rules", "rules-1"
    )
    assert len(rows) == 3
    assert sum(row["kept"] for row in rows) == kept
    assert [r["reason"] for r in rejects] == ["low_judge_score"] * (3 - kept)


def test_funnel_gives_each_stage_its_share_of_matched_and_of_the_stage_before():
    counts = {"matched": 200, "instantiated": 150, "grounded": 120, "judged": 120, "kept": 90}
    assert funnel(counts) == [
        {"stage": "matched", "pairs": 200, "of_matched": "100.0%", "of_previous": "100.0%"},
        {"stage": "instantiated", "pairs": 150, "of_matched": "75.0%", "of_previous": "75.0%"},
        {"stage": "grounded", "pairs": 120, "of_matched": "60.0%", "of_previous": "80.0%"},
        {"stage": "judged", "pairs": 120, "of_matched": "60.0%", "of_previous": "100.0%"},
        {"stage": "kept", "pairs": 90, "of_matched": "45.0%", "of_previous": "75.0%"},
    ]


def test_funnel_with_nothing_matched_has_no_percentages():
    rows = funnel({})
    assert [row["stage"] for row in rows] == list(FUNNEL_STAGES)
    assert all(row["pairs"] == 0 for row in rows)
    assert all(row["of_matched"] == row["of_previous"] == "-" for row in rows)


def test_funnel_after_an_empty_stage_has_no_share_of_previous():
    rows = funnel({"matched": 8, "instantiated": 0})
    assert [row["of_matched"] for row in rows] == ["100.0%", "0.0%", "0.0%", "0.0%", "0.0%"]
    assert [row["of_previous"] for row in rows] == ["100.0%", "0.0%", "-", "-", "-"]
