"""Stage D, the judge: Flow Judge's prompt, the parser on noisy judge outputs, the `rules` judge's
spread over good, weak and off-topic pairs and the pipeline's nonsense pairs, its figures on the
held-out half of the labelled calibration set and on the held-out SQuAD 2.0 articles, the SQuAD
set's building and loading, and the collection of judgements into rows, rejects and the funnel."""

import gzip
import json
import re

import pytest

from fi_method.llm_output import OutputParseError
from fi_method.synthesis import squad
from fi_method.synthesis.judge import (
    MIN_JUDGE_SCORE,
    OUTPUT_REGEX,
    ROLE,
    RUBRIC,
    Judgement,
    build_messages,
    format_output,
    parse_output,
)
from fi_method.synthesis.judge_calibration import (
    ENTITY_SWAP,
    KINDS,
    MISMATCHED,
    NEGATIVE_KINDS,
    POSITIVE,
    REPEATED,
    SWAPPED,
    TRUNCATED,
    calibration_set,
    fill_from,
    kept_shares,
    roc_auc,
    split,
)
from fi_method.synthesis.pairs import (
    FUNNEL_STAGES,
    collect_judgements,
    document_batches,
    funnel,
    one_pair_per_question,
)
from fi_method.synthesis.rules_judge import (
    coverage,
    missing_specifics,
    repetition,
    rules_judge,
    template_words_mentioned,
    truncated,
    unanswered_asks,
)

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
    for answer in [GOOD, OFF_TOPIC, *WEAK.values(), *(a for _, a, _ in PIPELINE_NONSENSE)]:
        judgement = rules_judge(INSTRUCTION, answer, DOCUMENT)
        assert parse_output(format_output(judgement)) == judgement


@pytest.mark.parametrize(
    ("instruction", "answer", "expected"),
    [
        ("Who built the Eiffel Tower?", "Gustave Eiffel built the Eiffel Tower.", 1.0),
        # Content words match on their first five letters or their stems: inflections count.
        ("How are bridges constructed?", "A bridge is built by construction crews.", 1.0),
        ("Who built the Eiffel Tower?", "Sourdough needs flour and water.", 0.0),
        # A name of several words is one term, found only as written: "Eiffel" alone is not
        # "Eiffel Tower", nor "Eiffel ... the tower"; a name weighs as much as the rarest word.
        ("Who built the Eiffel Tower?", "Eiffel himself built a house in Dijon.", 0.22),
        ("Who built the Eiffel Tower?", "Gustave Eiffel built the tower.", 0.22),
        # Numbers are terms, matched whole.
        ("Why did it rain in 2024?", "It snowed in 2023.", 0.0),
        # Nothing but stopwords, request verbs and short words: nothing to cover.
        ("Explain what it is to me.", "Anything at all.", 1.0),
    ],
)
def test_coverage_is_the_weighted_share_of_the_query_the_answer_mentions(
    instruction, answer, expected
):
    assert coverage(instruction, answer) == pytest.approx(expected, abs=0.05)


def test_a_rare_word_of_the_query_weighs_more_than_a_common_one():
    instruction = "What treatment helps sarcoidosis?"
    rare = "Sarcoidosis often clears by itself."
    common = "Good treatment helps most patients."
    assert coverage(instruction, rare) > 0.5 > coverage(instruction, common)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The tower was built in Paris.", 0.0),
        ("a b c a b c", 1 / 4),
        ("go go go go go", 2 / 3),
        ("too short", 0.0),
        ("", 0.0),
        # Whole sentences said again count where fewer of the trigrams repeat (3 of 12).
        ("The tower is tall. It was built in Paris. It was built in Paris.", 1 / 3),
    ],
)
def test_repetition_is_the_share_of_repeated_trigrams_or_sentences(answer, expected):
    assert repetition(answer) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("answer", "cut"),
    [
        ("The bridge was opened in 1894 by the Prince of Wales.", False),
        ("The bridge was opened in 1894 by the", True),
        ("The bridge was opened in 1894 and it carried traffic across the", True),
        # Prose without its full stop.
        ("The bridge was opened in 1894 and carried traffic", True),
        # List items, signatures and hashtags end without punctuation.
        ("Three steps:\n- Mix the flour\n- Add the eggs\n- Bake for an hour", False),
        ("Thank you for your time.\n\nWarm regards,\nMark", False),
        ("Big news today! #NewJob #CareerGrowth", False),
        # A list whose items are sentences does not end on a fragment.
        ("Tips:\n1. Sleep well every night.\n2. Eat fresh food daily.\n3. Walk every", True),
        ("print('done')\n```", False),
    ],
)
def test_truncated_finds_an_answer_cut_off_mid_sentence(answer, cut):
    assert truncated(answer) is cut


# Pairs from the pipeline that the first rules judge kept with 5: a template slot filled with a
# span of the document, and the document's passage as the answer, which does not answer.
PIPELINE_NONSENSE = [
    (
        "who were the cubs playing in Adventure World",
        (
            "Canyoning guides in the park lead groups through the gorges below Adventure World, where "
            "visitors abseil down waterfalls, swim through narrow slot canyons and jump into deep rock "
            "pools carved by the river."
        ),
        "a person",
    ),
    (
        "what is the scientific name for HIV",
        (
            "According to scientific surveys, the HIV infection rate among adults aged 15 to 49 in the "
            "province rose to 12.4 percent in 2019, up from 9.8 percent in 2010, the highest of any "
            "region."
        ),
        "a name",
    ),
    # Kept at judge rules-18 from ShareGPT answers: a brand the small parser took for a person,
    # and a letter's blank the small parser took for a company.
    (
        "what company did Borne Clothing work for?",
        (
            "Borne Clothing could work with travel bloggers to promote the brand and create content "
            "showcasing the clothing's effectiveness in mosquito-prone areas. Additionally, Borne "
            "Clothing could partner with travel companies or airlines to offer special discounts on "
            "clothing for customers booking trips to these destinations."
        ),
        "an organization",
    ),
    (
        "what company did Ugne work for?",
        (
            "Ugne will be working on a full-time basis for [Employer Name] and will be responsible "
            "for [insert job duties]. Our company is committed to providing Ugne with a competitive "
            "salary and benefits package, and we will ensure that he is paid at least the actual or "
            "prevailing wage for the occupation, whichever is higher."
        ),
        "an organization",
    ),
]
SENSIBLE = [
    (
        "what company did Nikola Tesla work for?",
        (
            "In 1882, Nikola Tesla began working for the Continental Edison Company in France, "
            "designing and making improvements to electrical equipment. In 1884 he moved to New York "
            "City to work for Edison Machine Works on Manhattan's Lower East Side."
        ),
    ),
    (
        "who were the Cubs playing in the 1908 World Series",
        (
            "The Chicago Cubs played the Detroit Tigers in the 1908 World Series, winning four games "
            "to one to take their second consecutive championship, a title they would not win again "
            "until 2016."
        ),
    ),
    (
        "what is the scientific name for HIV",
        (
            "HIV is the human immunodeficiency virus, a lentivirus of the retrovirus family; its two "
            "species are named HIV-1 and HIV-2, and untreated infection leads to AIDS over time."
        ),
    ),
]


@pytest.mark.parametrize(("instruction", "answer", "asked"), PIPELINE_NONSENSE)
def test_pipeline_nonsense_is_not_kept_and_the_feedback_says_what_is_missing(
    instruction, answer, asked
):
    judgement = rules_judge(instruction, answer, document=answer)
    assert judgement.score < MIN_JUDGE_SCORE
    assert unanswered_asks(instruction, answer) == [asked]
    assert f"the query asks for {asked}, and none is given" in judgement.feedback


@pytest.mark.parametrize(("instruction", "answer"), SENSIBLE)
def test_a_sensible_pipeline_pair_is_kept(instruction, answer):
    assert rules_judge(instruction, answer, document=answer).score >= MIN_JUDGE_SCORE


def test_display_math_gives_what_is_asked_and_a_form_s_blank_does_not():
    question = "how much more money does he need?"
    assert unanswered_asks(question, "He needs \\[ 8000 - 2000 = 6000 \\] more.") == []
    asked = "what company did she work for?"
    assert unanswered_asks(asked, "She worked for Microsoft in 2019.") == []
    assert unanswered_asks(asked, "She worked for [Employer Name] in 2019.") == ["an organization"]


def test_a_long_request_that_also_asks_which_companies_is_not_held_to_its_focus():
    request = (
        "I have competencies in remote sensing, machine learning, and water resource knowledge, "
        "what are the possible jobs I can occupy? What are the possible projects I can do? What "
        "companies I can work at?"
    )
    answer = (
        "With your competencies in remote sensing, machine learning, and water resource "
        "management, you can work as a remote sensing analyst, a water resources engineer or a "
        "machine learning engineer.\n\nCompanies: NASA, the European Space Agency, Esri and DHI."
    )
    assert unanswered_asks(request, answer) == []


# A rules template matched to a passage it does not fit: the instantiator filled its slot with a
# span of the passage, so every slot value is in the answer, and nothing the template asks is.
# The rules-2 judge, which did not read templates, kept this pair from a run on Wikipedia with 5.
ACCESSIBILITY = (
    "This allows greater computer accessibility for a wide range of visual abilities. Screen "
    "readers announce the text under the cursor, magnifiers enlarge it, and assistive technology "
    "such as refreshable braille displays lets blind users read what the screen shows."
)


def test_a_template_answered_only_by_its_slot_values_is_not_kept():
    template = "how does trade impact on <fi>a kind of power</fi>"
    instruction = "how does trade impact on assistive technology"
    # Without the template the focus already refuses it: "trade" and "impact" are nowhere near
    # "assistive technology" (rules-2 kept it with 5); the template names them as what is asked.
    without = rules_judge(instruction, ACCESSIBILITY, ACCESSIBILITY)
    assert without.score < MIN_JUDGE_SCORE
    assert 'words "trade", "impact" appear nowhere near "assistive", "technology"' in (
        without.feedback
    )
    judgement = rules_judge(instruction, ACCESSIBILITY, ACCESSIBILITY, template)
    assert judgement.score < MIN_JUDGE_SCORE
    assert 'of what the template asks (never "trade", "impact")' in judgement.feedback


# A news passage the rules instantiator matched to a search-query template: its only slot value,
# "Australia", is in the passage, and nothing about floors is.
ASYLUM = (
    "Australia has taken a hard line on asylum seekers who arrive by boat, sending them to "
    "offshore detention centres on Nauru and Manus Island. Human rights groups have criticised "
    "the policy, and the United Nations has called on Australia to close the camps and resettle "
    "the refugees held there."
)


def test_a_pipeline_pair_whose_passage_only_names_the_slot_value_is_refused_saying_what_is_missing():
    template = "how many floors is <fi>a country</fi>"
    judgement = rules_judge("how many floors is Australia", ASYLUM, ASYLUM, template)
    assert judgement.score < MIN_JUDGE_SCORE
    assert 'its word "floors" appears nowhere near "Australia"' in judgement.feedback
    assert "never says how many or how much" in judgement.feedback
    assert 'of what the template asks (never "floors")' in judgement.feedback


def test_the_focus_finds_the_sentence_that_answers():
    passage = (
        "Australia is a country of six states. Its tallest building, the Q1 tower on the Gold "
        "Coast, has 78 floors and opened in 2005. Most Australians live near the coast."
    )
    judgement = rules_judge(
        "how many floors does the tallest building in Australia have", passage, passage
    )
    assert judgement.score >= MIN_JUDGE_SCORE, judgement.feedback


AFGHANISTAN = (
    "Afghanistan (Pashto/Dari: , Afġānistān), officially the Islamic Republic of Afghanistan, is "
    "a landlocked country located within South Asia and Central Asia. It has a population of "
    "approximately 32 million, making it the 42nd most populous country in the world. It is "
    "bordered by Pakistan in the south and east; Iran in the west; Turkmenistan, Uzbekistan, and "
    "Tajikistan in the north; and China in the far northeast."
)


@pytest.mark.parametrize(
    ("value", "kept"),
    [("officially the Islamic Republic of Afghanistan", False), ("Afghanistan", True)],
)
def test_a_slot_filled_with_a_clause_of_the_passage_is_not_kept(value, kept):
    """rules-8: the rules instantiator filled "the country of <fi>a city or country</fi>" with
    the passage's apposition; rules-7 kept the pair at score 5 (fi demo --full's data root)."""
    template = "where is the country of <fi>a city or country</fi> located?"
    instruction = f"where is the country of {value} located?"
    judgement = rules_judge(instruction, AFGHANISTAN, AFGHANISTAN, template)
    assert (judgement.score >= MIN_JUDGE_SCORE) is kept, judgement.feedback
    assert kept or "a clause of the passage" in judgement.feedback


def test_a_template_its_answer_answers_is_kept():
    template = (
        "who played <fi>a character in a TV series or film</fi> in <fi>a TV series or film</fi>"
    )
    instruction = "who played the Joker in The Dark Knight"
    answer = (
        "Heath Ledger played the Joker in The Dark Knight, the 2008 film directed by Christopher "
        "Nolan; he died before its release and won a posthumous Academy Award for the role."
    )
    assert rules_judge(instruction, answer, answer, template).score >= MIN_JUDGE_SCORE


@pytest.mark.parametrize(
    ("template", "share", "missing"),
    [
        ("how does trade impact on <fi>a kind of power</fi>", 0.0, ["trade", "impact"]),
        ("which screen readers help <fi>a group of people</fi>", 1.0, []),
        (
            "what do magnifiers and braille printers cost for <fi>a group</fi>",
            0.5,
            ["printers", "cost"],
        ),
        # A template without slots is all its own words; one of only stopwords asks nothing.
        ("<fi>a question</fi>", 1.0, []),
        # "Do you know X?" asks who X is: the answer need not say "know" (a passage that says
        # "I know they laugh at Rand" was chosen for "Do you know about Ayn Rand?" for it).
        ("Do you know about <fi>a person</fi>?", 1.0, []),
        ("have you heard of <fi>a person</fi>?", 1.0, []),
        # Someone else's knowing is what a template asks about.
        ("what did <fi>a person</fi> know about screen readers?", 1 - 1 / 3, ["know"]),
    ],
)
def test_template_words_mentioned_counts_the_template_words_the_answer_mentions(
    template, share, missing
):
    assert template_words_mentioned(template, ACCESSIBILITY) == (share, missing)


ANSWER = (
    "Christopher Nolan directed Inception, a 2010 science fiction film about a thief who steals "
    "secrets by entering the dreams of his targets; it won four Academy Awards."
)


def test_each_negative_kind_scores_below_the_kept_pair():
    """One realistic example of each kind of the calibration set, the answer as the document."""
    question = "Who directed the movie Inception?"
    pairs = {
        POSITIVE: (question, ANSWER),
        SWAPPED: (question, OFF_TOPIC),
        TRUNCATED: (question, "Christopher Nolan directed Inception, a 2010 science fiction film"),
        REPEATED: (question, " ".join(["Christopher Nolan directed Inception in 2010."] * 4)),
        ENTITY_SWAP: ("Who directed the movie Jurassic Park?", ANSWER),
        MISMATCHED: ("Who directed the movie Assistive Technology?", ACCESSIBILITY),
    }
    template = "Who directed the movie <fi>a film</fi>?"
    scores = {kind: rules_judge(q, a, a, template).score for kind, (q, a) in pairs.items()}
    assert scores[POSITIVE] >= MIN_JUDGE_SCORE
    assert all(scores[kind] < MIN_JUDGE_SCORE for kind in NEGATIVE_KINDS), scores


def test_missing_names_weigh_more_than_missing_rare_words():
    missing, share, named_share = missing_specifics("Who directed Jurassic Park?", ANSWER)
    assert [term.text for term in missing] == ["Jurassic Park"]
    assert share == named_share == 1.0
    missing, share, named_share = missing_specifics("Who directed the sequel to Inception?", ANSWER)
    assert [term.text for term in missing] == ["sequel"]
    assert named_share == 0.0 < share < 1.0


# --- calibration on labelled real pairs -----------------------------------------------------


@pytest.fixture(scope="module")
def calibration():
    return calibration_set()


def test_the_calibration_set_is_seeded_and_holds_every_kind(calibration):
    assert calibration_set(per_kind=40) == calibration_set(per_kind=40)
    counts = {kind: sum(p.kind == kind for p in calibration) for kind in KINDS}
    assert all(count >= 300 for count in counts.values()), counts
    assert all(p.document == p.answer for p in calibration)
    tuning, heldout = split(calibration)
    assert not {p.item for p in tuning} & {p.item for p in heldout}
    assert abs(len(tuning) - len(heldout)) < len(calibration) / 10


def test_a_mismatched_pair_fills_its_template_with_spans_of_the_answer():
    template = "Who directed the movie <fi>a film</fi>?"
    instruction = fill_from(template, ANSWER)
    assert instruction.startswith("Who directed the movie ") and instruction.endswith("?")
    value = instruction.removeprefix("Who directed the movie ").removesuffix("?")
    assert value in ANSWER
    assert fill_from("Who directed the movie Inception?", ANSWER) is None


def test_the_rules_judge_separates_real_pairs_from_nonsense_on_the_held_out_half(calibration):
    """The regression guard: on pairs its thresholds were not set on, the judge ranks real pairs
    above made-up bad ones (AUC) and keeps few of the bad ones while it keeps most real ones."""
    _, heldout = split(calibration)
    scores = [rules_judge(p.instruction, p.answer, p.document, p.template).score for p in heldout]
    # rules-4: AUC 0.874, 67.6 % of real pairs and 3.9 % of negatives kept. The focus on short
    # questions costs real pairs here (rules-2 reading templates: 0.895, 72.5 %, 4.3 %): a short
    # question whose long answer spreads its words over paragraphs reads as unfocused.
    assert roc_auc(scores, [p.positive for p in heldout]) >= 0.865
    kept = kept_shares(heldout, scores, MIN_JUDGE_SCORE)
    assert kept["negatives"] < 0.06
    assert kept[POSITIVE] >= 0.65
    assert all(kept[kind] < 0.15 for kind in NEGATIVE_KINDS), kept


# --- SQuAD 2.0: an answer against a passage that mentions the same things --------------------


@pytest.fixture(scope="module")
def squad_heldout():
    return squad.load_pairs(split=squad.HELD_OUT)


def _by_id(pairs, question_id, kind):
    return next(p for p in pairs if p.question_id == question_id and p.kind == kind)


def test_the_shipped_squad_set_holds_every_kind_split_by_article(squad_heldout):
    pairs = squad.load_pairs()
    tuning = [p for p in pairs if p.split == squad.TUNING]
    assert {p.article for p in tuning}.isdisjoint({p.article for p in squad_heldout})
    assert len({p.article for p in squad_heldout}) == 17
    assert {"Normans", "Rhine", "Warsaw", "Force"} < {p.article for p in squad_heldout}
    counts = {k: sum(p.kind == k for p in squad_heldout) for k in squad.KINDS}
    assert counts == {"positive": 2368, "other_paragraph": 2360, "unanswerable": 2511}
    assert len({p.question_id for p in squad_heldout}) == 2368 + 2511
    normandy = [p for p in squad_heldout if p.question == "In what country is Normandy located?"]
    assert {p.kind for p in normandy} == {squad.POSITIVE, squad.OTHER_PARAGRAPH}
    assert "France" in _by_id(squad_heldout, normandy[0].question_id, squad.POSITIVE).paragraph
    assert (
        "France" not in _by_id(squad_heldout, normandy[0].question_id, "other_paragraph").paragraph
    )


def test_the_rules_judge_tells_answers_from_passages_on_the_held_out_squad_articles(squad_heldout):
    """The regression guard on the 17 dev articles the thresholds never saw. Goals: positives
    kept >= 80 %, other paragraphs <= 5 %, unanswerable <= 40 %. Reached (rules-7): 69.4 %,
    2.5 %, 43.1 % (rules-6: 69.4 %, 2.5 %, 49.2 %; rules-2: 84.2 %, 8.3 %, 75.5 %). SQuAD 2.0's
    unanswerable questions were written to look answered by their paragraph, same words and a
    plausible answer nearby, which word rules do not see through; and a third of its answerable
    questions say in other words what their paragraph says ("accommodate" for "seat"), which
    word rules do not match."""
    kept = {kind: [] for kind in squad.KINDS}
    for pair in squad_heldout:
        score = rules_judge(pair.instruction, pair.answer, pair.document).score
        kept[pair.kind].append(score >= MIN_JUDGE_SCORE)
    share = {kind: sum(flags) / len(flags) for kind, flags in kept.items()}
    assert share[squad.POSITIVE] >= 0.69, share
    assert share[squad.OTHER_PARAGRAPH] <= 0.03, share
    assert share[squad.UNANSWERABLE] <= 0.44, share


def test_a_question_is_kept_with_its_paragraph_and_refused_with_another_of_its_article(
    squad_heldout,
):
    own = _by_id(squad_heldout, "572f567cb2c2fd1400568043", squad.POSITIVE)
    other = _by_id(squad_heldout, "572f567cb2c2fd1400568043", squad.OTHER_PARAGRAPH)
    assert own.question == other.question == "What has shortened the Rhine river?"
    assert "Rhine" in other.paragraph
    assert rules_judge(own.question, own.paragraph, own.paragraph).score >= MIN_JUDGE_SCORE
    judgement = rules_judge(other.question, other.paragraph, other.paragraph)
    assert judgement.score < MIN_JUDGE_SCORE
    assert 'its word "shortened" appears nowhere near "Rhine", "river"' in judgement.feedback


@pytest.fixture(scope="module")
def squad_tuning():
    return squad.load_pairs(split=squad.TUNING)


@pytest.mark.parametrize(
    ("question_id", "kind", "kept", "fault"),
    [
        # The paragraph: "he and Napes wrote it in under half an hour".
        ("5ad2407bd7d075001a428939", squad.UNANSWERABLE, False, 'never states "fifteen"'),
        # The paragraph: "he would be reprising his role as Mr. White".
        ("5ad22b6bd7d075001a4285fa", squad.UNANSWERABLE, False, "asks what is not so"),
        ("56bf8fc1a10cfb1400551176", squad.POSITIVE, True, None),  # "... release in 2003?"
        ("56cd682162d2951400fa658e", squad.POSITIVE, True, None),  # "... the Ming did not possess?"
    ],
)
def test_a_number_or_a_negation_the_passage_does_not_state_is_not_kept(
    squad_tuning, question_id, kind, kept, fault
):
    pair = _by_id(squad_tuning, question_id, kind)
    judgement = rules_judge(pair.question, pair.paragraph, pair.paragraph)
    assert (judgement.score >= MIN_JUDGE_SCORE) is kept, judgement
    assert fault is None or fault in judgement.feedback


@pytest.mark.parametrize(
    ("question_id", "kind", "kept", "fault"),
    [
        # The paragraph: "The production faced opposition from ... city authorities".
        ("5ad22fe9d7d075001a4286a5", squad.UNANSWERABLE, False, '"support", the answer says "opp'),
        # The paragraph: "Oberhauser's father, Hannes, became his temporary guardian".
        ("5ad224b1d7d075001a42852c", squad.UNANSWERABLE, False, '"mother", the answer says "fa'),
        # The paragraph: "describing Spectre as inconsistent and unable to capitalise".
        ("5ad246ecd7d075001a428b0a", squad.UNANSWERABLE, False, 'answer says "inconsistent"'),
        # The paragraph: "When Link enters the Twilight Realm ... he transforms into a wolf"; it
        # names Epona in another sentence.
        ("5a8d89b5df8bba001a0f9af7", squad.UNANSWERABLE, False, 'names "Epona" only apart'),
        # The paragraph: "a Dutch fur trading settlement on Governors Island": "trade" is "trading".
        ("56cedbb9aab44d1400b88b0f", squad.POSITIVE, True, None),
        ("56bf8fc1a10cfb1400551176", squad.POSITIVE, True, None),
    ],
)
def test_an_opposite_or_a_name_said_apart_is_not_kept(squad_tuning, question_id, kind, kept, fault):
    """rules-7: questions SQuAD 2.0 made unanswerable by an antonym or a swapped entity, which
    rules-6 kept (score 4 or 5), are refused, and positives are still kept."""
    pair = _by_id(squad_tuning, question_id, kind)
    judgement = rules_judge(pair.question, pair.paragraph, pair.paragraph)
    assert (judgement.score >= MIN_JUDGE_SCORE) is kept, judgement
    assert fault is None or fault in judgement.feedback


SQUAD_ARTICLE = {
    "title": "Eiffel_Tower",
    "paragraphs": [
        {
            "context": "The Eiffel Tower was built for the 1889 World's Fair in Paris.",
            "qas": [
                {
                    "id": "q1",
                    "question": "For which event was the Eiffel Tower built?",
                    "answers": [{"text": "the 1889 World's Fair", "answer_start": 31}],
                    "is_impossible": False,
                },
                {
                    "id": "q2",
                    "question": "Who built the tower for the 1890 fair?",
                    "answers": [],
                    "is_impossible": True,
                },
                # A gold answer whose offset points elsewhere: left out, named.
                {
                    "id": "q3",
                    "question": "Where is the Eiffel Tower?",
                    "answers": [{"text": "Paris", "answer_start": 3}],
                    "is_impossible": False,
                },
            ],
        },
        {
            "context": "Gustave Eiffel's company designed the tower.",
            "qas": [],
        },
    ],
}


def _squad_file(tmp_path, name, articles):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "v2.0", "data": articles}), encoding="utf-8")
    return path


def test_build_pairs_is_seeded_and_names_the_questions_it_leaves_out(tmp_path):
    train = _squad_file(tmp_path, "train.json", [SQUAD_ARTICLE])
    dev = _squad_file(tmp_path, "dev.json", [{**SQUAD_ARTICLE, "title": "Tower_dev"}])
    pairs, rejects = squad.build_pairs(train, [dev])
    assert pairs == squad.build_pairs(train, [dev])[0]
    assert [(p.split, p.kind, p.question_id) for p in pairs if p.article == "Eiffel_Tower"] == [
        ("tuning", "positive", "q1"),
        ("tuning", "other_paragraph", "q1"),
        ("tuning", "unanswerable", "q2"),
    ]
    other = pairs[1]
    assert other.paragraph == "Gustave Eiffel's company designed the tower."
    assert {(r.file, r.question_id) for r in rejects} == {(str(train), "q3"), (str(dev), "q3")}
    assert "'Paris' is not at offset 3" in rejects[0].reason
    out = tmp_path / "pairs.jsonl.gz"
    squad.write_pairs(pairs, out)
    first = out.read_bytes()
    squad.write_pairs(pairs, out)
    assert out.read_bytes() == first
    assert squad.load_pairs(out) == pairs


def test_a_squad_file_of_another_version_is_refused_by_name(tmp_path):
    old = tmp_path / "train-v1.1.json"
    old.write_text(json.dumps({"version": "1.1", "data": [SQUAD_ARTICLE]}), encoding="utf-8")
    with pytest.raises(squad.SquadDataError, match="train-v1.1.json: not a SQuAD v2.0 file"):
        squad.build_pairs(old, [old])


def test_an_article_in_two_dev_files_is_taken_once_and_large_articles_are_drawn_down(tmp_path):
    """Public copies of SQuAD's dev set overlap (both hold Normans): an article counts once, from
    the first file, so no question is judged twice; and an article gives at most `max_questions`
    of each kind, drawn with a seed."""
    train = _squad_file(tmp_path, "train.json", [SQUAD_ARTICLE])
    tower = {**SQUAD_ARTICLE, "title": "Tower_dev"}
    first = _squad_file(tmp_path, "dev-part.json", [tower])
    many = [
        {"id": f"m{i}", "question": f"What is tower {i}?", "answers": [], "is_impossible": True}
        for i in range(5)
    ]
    changed = {"title": "Tower_dev", "paragraphs": [{"context": "Another.", "qas": many}]}
    second = _squad_file(tmp_path, "dev-other.json", [changed, {**changed, "title": "Bridge"}])
    pairs, _ = squad.build_pairs(train, [first, second], max_questions=3)
    held_out = [p for p in pairs if p.split == squad.HELD_OUT]
    assert [(p.kind, p.question_id) for p in held_out if p.article == "Tower_dev"] == [
        ("positive", "q1"),
        ("other_paragraph", "q1"),
        ("unanswerable", "q2"),
    ]
    bridge = [p.question_id for p in held_out if p.article == "Bridge"]
    assert len(bridge) == 3 and set(bridge) < {f"m{i}" for i in range(5)}
    again, _ = squad.build_pairs(train, [first, second], max_questions=3)
    assert bridge == [p.question_id for p in again if p.article == "Bridge"]


def test_a_malformed_shipped_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    good = {
        "article": "Rhine",
        "split": "held-out",
        "kind": "positive",
        "question_id": "x1",
        "question": "Where does the Rhine begin?",
        "paragraph": "The Rhine begins in the Swiss canton of Graubünden.",
    }
    bad = {**good, "question": ""}
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(squad.SquadDataError, match=r"pairs.jsonl.gz:2: missing or empty question"):
        squad.load_pairs(path)


def test_the_rules_cache_key_holds_the_template():
    item = {"instruction": "q", "answer": "a", "doc_id": "d", "document": "a"}
    assert ROLE.rules.key(item)["template"] is None
    assert ROLE.rules.key({**item, "template": "<fi>x</fi>"})["template"] == "<fi>x</fi>"


@pytest.mark.parametrize(
    ("scores", "positive", "auc"),
    [
        ([1, 2, 3, 4], [False, False, True, True], 1.0),
        ([4, 3, 2, 1], [False, False, True, True], 0.0),
        ([3, 3, 3, 3], [False, True, False, True], 0.5),
        ([1, 3, 3, 5], [False, False, True, True], 0.875),
    ],
)
def test_roc_auc_counts_ties_as_half(scores, positive, auc):
    assert roc_auc(scores, positive) == pytest.approx(auc)


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


def test_a_document_keeps_its_best_pair_per_question():
    """Pairs the --full run kept side by side: one template on two chunks of the Albania article
    ("what do Albanians speak?"), a near-twin spelled otherwise, and one in another tense
    ("what language did Albanians speak?" beside "what language do the Albanians speak?"). The
    best-scored stays kept (a tie goes to the lowest pair_id); another article may ask the same,
    and a question with another word ("what language" for "what") is another question."""
    asked = {
        "a1": ("albania", "what do Albanians speak?"),
        "a2": ("albania", "What do Albanians speak"),
        "a3": ("albania", "what do albanians speak?"),
        "a4": ("albania", "what language do the Albanians speak?"),
        "k1": ("kosovo", "what do Albanians speak?"),
        "a5": ("albania", "what do Albanians speak?"),
        "a6": ("albania", "what language did Albanians speak?"),
    }
    pairs = [
        {"pair_id": pair_id, "doc_id": doc, "instruction": question, "source": "unit"}
        for pair_id, (doc, question) in asked.items()
    ]
    scores = {"a1": 4, "a2": 5, "a3": 5, "a4": 5, "k1": 4, "a5": 2, "a6": 4}
    outputs = [f"<feedback>x</feedback><score>{scores[p]}</score>" for p in asked]
    rows, rejects = one_pair_per_question(pairs, *collect_judgements(pairs, outputs, 4, "r", "r"))
    assert {row["pair_id"]: row["kept"] for row in rows} == {
        "a1": False,
        "a2": True,
        "a3": False,
        "a4": True,
        "k1": True,
        "a5": False,
        "a6": False,
    }
    duplicates = [
        (r["item_id"], r["detail"]) for r in rejects if r["reason"] == "duplicate_instruction"
    ]
    assert duplicates == [
        ("a3", "pair a2 of the document asks the same and scored 5"),
        ("a1", "pair a2 of the document asks the same and scored 5"),
        ("a6", "pair a4 of the document asks the same and scored 5"),
    ]
    assert [r["item_id"] for r in rejects if r["reason"] == "low_judge_score"] == ["a5"]


@pytest.mark.parametrize(
    ("most", "batches"),
    [
        (4, ["aaa", "bbc", "ddddd", "e"]),  # d's five pairs alone: a document is never split
        (5, ["aaabb", "c", "ddddd", "e"]),
        (100, ["aaabbcddddde"]),
        (1, ["aaa", "bb", "c", "ddddd", "e"]),
    ],
)
def test_judging_batches_hold_whole_documents_and_at_most_so_many_pairs(most, batches):
    doc_ids = list("aaabbcddddde")
    assert ["".join(doc_ids[batch]) for batch in document_batches(doc_ids, most)] == batches
    assert document_batches([], most) == []


@pytest.mark.parametrize(
    ("most_documents", "batches"),
    [
        (2, ["aaabb", "cddddd", "e"]),
        (1, ["aaa", "bb", "c", "ddddd", "e"]),
        (5, ["aaabbcddddde"]),
    ],
)
def test_batches_hold_at_most_so_many_documents_when_asked(most_documents, batches):
    doc_ids = list("aaabbcddddde")
    found = document_batches(doc_ids, 100, most_documents)
    assert ["".join(doc_ids[batch]) for batch in found] == batches


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


def test_the_output_grammar_lets_feedback_quote_a_comparison_and_ends_it_at_its_closing_tag():
    """Constrained decoding holds Flow Judge to OUTPUT_REGEX. Feedback that compares ("3 < 5")
    or quotes a tag must fit (the old grammar forbade every "<", so such feedback closed early);
    a closing tag inside it must not, since that is where the feedback ends. The grammar
    library the transformers engine uses compiles it (no lookahead)."""
    import xgrammar

    xgrammar.Grammar.from_regex(OUTPUT_REGEX)
    comparing = (
        "<feedback>The answer says 3 < 5 and quotes <b> once; it addresses the query.</feedback>"
        "\n<score>4</score>"
    )
    assert re.fullmatch(OUTPUT_REGEX, comparing)
    assert parse_output(comparing) == Judgement(
        4, "The answer says 3 < 5 and quotes <b> once; it addresses the query."
    )
    assert not re.fullmatch(OUTPUT_REGEX, "<feedback>ends</b> early</feedback><score>4</score>")
    assert ROLE.max_new_tokens == 1000  # Flow Judge's own client's budget
