import re

import pytest

from fi_method.llm_output import OutputParseError
from fi_method.templating.genericizer import (
    RELEASED_TEMPLATIZER,
    GenericizedQuery,
    build_messages,
    parse_output,
    prompt_style_for,
)
from fi_method.templating.ifbench import ifbench_queries
from fi_method.templating.rules_genericizer import (
    ENTITY_DESCRIPTION,
    MAX_SLOTS,
    REQUEST_VERBS,
    STOPWORDS,
    TOPIC_DESCRIPTION,
    filler_spans,
    rules_genericize,
    rules_output,
    slot_fillers,
)
from fi_method.templating.templates import (
    TemplateError,
    count_tags,
    slot_descriptions,
    validate_template,
)

# --- prompt ---------------------------------------------------------------------------------


def test_bare_prompt_is_the_query_alone():
    query = "What did Nikola Tesla invent in 1891?"
    assert build_messages(query, "bare") == [{"role": "user", "content": query}]


def test_instructed_prompt_explains_the_format_and_ends_with_the_query():
    query = "What did Nikola Tesla invent in 1891?"
    messages = build_messages(query, "instructed")
    assert messages[0]["role"] == "system"
    for needle in ("<fi>", "</fi>", '"template"', '"compatible_document_description"'):
        assert needle in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": query}
    roles = [message["role"] for message in messages[1:]]
    assert roles == ["user", "assistant"] * ((len(roles) - 1) // 2) + ["user"]
    # Small models have short attention: the whole prompt stays around 300 tokens.
    assert sum(len(message["content"]) for message in messages) < 1_400


def test_instructed_examples_are_valid_answers_to_their_queries():
    messages = build_messages("anything", "instructed")
    examples = list(zip(messages[1:-1:2], messages[2:-1:2], strict=True))
    assert len(examples) >= 2
    for user, assistant in examples:
        answer = parse_output(assistant["content"])
        validate_template(answer.template, answer.compatible_document_description, user["content"])


def test_unknown_prompt_style_is_refused():
    with pytest.raises(ValueError):
        build_messages("hi there friend", "fancy")


@pytest.mark.parametrize(
    ("model", "style"),
    [
        (RELEASED_TEMPLATIZER, "bare"),
        ("FineInstructions/Query_Templatizer", "bare"),
        ("models/query_templatizer/", "bare"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "instructed"),
        ("someone/query_templatizer_v2", "instructed"),
        ("query_templatizer-GGUF", "instructed"),
    ],
)
def test_prompt_style_follows_the_model(model, style):
    assert prompt_style_for(model) == style


# --- output parser --------------------------------------------------------------------------

TEMPLATE = "What did <fi>an inventor</fi> invent in <fi>a year</fi>?"
DOCUMENT = "A biography of an inventor covering what they built in a given year."
ANSWER = f'{{"template": "{TEMPLATE}", "compatible_document_description": "{DOCUMENT}"}}'


@pytest.mark.parametrize(
    ("query", "template"),
    [
        (
            "who played atticus finch in the movie?",
            "who played <fi>a character in a TV series or film</fi> in the movie?",
        ),
        # A title around the noun still names a film.
        (
            "who plays jacob black in the twilight movies?",
            (
                "who plays <fi>a character in a TV series or film</fi> in "
                "<fi>a TV series or film</fi>?"
            ),
        ),
    ],
)
def test_a_kind_of_work_is_no_title(query, template):
    assert rules_genericize(query).template == template


def test_who_wrote_the_lyrics_has_nothing_to_make_a_slot_of():
    with pytest.raises(TemplateError, match="nothing in the query is specific enough"):
        rules_genericize("who wrote the lyrics?")


@pytest.mark.parametrize(
    ("query", "template"),
    [
        # The small parser runs the name on into the question's verb, tagged a verb ...
        (
            "what did martin luther king jr go to college for?",
            "what did <fi>a person</fi> go to college for?",
        ),
        # ... or tagged a name: "did" still needs its verb.
        ("who did john lennon marry?", "who did <fi>a person</fi> marry?"),
        ("where was martin luther king jr buried?", "where was <fi>a person</fi> buried?"),
        ("what movies did nick cannon star in?", "what movies did <fi>a person</fi> star in?"),
        # A surname tagged a verb stays in the name when the question's verb follows it.
        ("where does tim cook work?", "where does <fi>a person</fi> work?"),
        (
            "what style of music did jimi hendrix play?",
            "what style of music did <fi>a person</fi> play?",
        ),
        # "junior" is part of the name, not of the question.
        (
            "where did martin luther king junior go to college?",
            "where did <fi>a person</fi> go to college?",
        ),
    ],
)
def test_a_person_s_name_ends_before_the_question_s_verb_and_after_junior(query, template):
    assert rules_genericize(query).template == template


@pytest.mark.parametrize(
    "text",
    [
        ANSWER,
        f"```json\n{ANSWER}\n```",
        f"Sure! Here is the template:\n{ANSWER}\nLet me know if you need anything else.",
        f"{ANSWER}\n\nNote: {{the slots are",
        f"Thinking {{about it}}... {ANSWER}",
        f'{{"template": "  {TEMPLATE}\\n", "compatible_document_description": " {DOCUMENT} "}}',
    ],
)
def test_parser_finds_the_answer_in_noisy_output(text):
    assert parse_output(text) == GenericizedQuery(TEMPLATE, DOCUMENT)


def test_parser_keeps_braces_inside_strings():
    text = (
        'Output: {"template": "Why does {x} differ from <fi>a set {of} things</fi>?", '
        '"compatible_document_description": "Notes on sets like {a, b}."} trailing }'
    )
    parsed = parse_output(text)
    assert parsed.template == "Why does {x} differ from <fi>a set {of} things</fi>?"
    assert parsed.compatible_document_description == "Notes on sets like {a, b}."


def test_parser_accepts_raw_newlines_inside_values():
    text = '{"template": "How to cook <fi>a dish</fi>?", "compatible_document_description": "A\nrecipe."}'
    assert parse_output(text).compatible_document_description == "A\nrecipe."


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I cannot help with that request.", "no_json"),
        ("", "no_json"),
        ('{"template": "What did <fi>an inventor</fi> invent', "invalid_json"),
        ("```json\n{template: 'x'}\n```", "invalid_json"),
        (f'{{"template": "{TEMPLATE}"}}', "missing_field"),
        (f'{{"compatible_document_description": "{DOCUMENT}"}}', "missing_field"),
        (f'{{"template": 3, "compatible_document_description": "{DOCUMENT}"}}', "not_a_string"),
        (f'{{"template": "{TEMPLATE}", "compatible_document_description": null}}', "not_a_string"),
        (f'{{"template": ["{TEMPLATE}"], "compatible_document_description": "x"}}', "not_a_string"),
    ],
)
def test_parser_failures_carry_a_reason(text, reason):
    with pytest.raises(OutputParseError) as caught:
        parse_output(text)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


# --- rules engine ---------------------------------------------------------------------------


def test_names_and_years_become_slots():
    result = rules_genericize("What did Nikola Tesla invent in 1891?")
    assert result.template == "What did <fi>a person</fi> invent in <fi>a year</fi>?"
    assert "a person" in result.compatible_document_description
    assert "a year" in result.compatible_document_description


def test_topical_noun_phrase_keeps_its_head_and_the_question():
    result = rules_genericize("How do I bake sourdough bread at home?")
    assert result.template == "How do I bake <fi>a kind of bread</fi> at home?"
    assert result.compatible_document_description.startswith("A guide")


def test_numbers_are_described_by_what_they_measure():
    result = rules_genericize(
        "I paid $250 for a 5 kg bag of rice in March 2021; is a 20% price rise since the 1960s "
        "normal?"
    )
    assert slot_descriptions(result.template) == [
        "an amount of money",
        "a quantity",
        "a date",
        "a percentage",
        "a decade",
    ]


def test_quoted_titles_and_organizations():
    result = rules_genericize(
        'Write a poem called "The Silent Sea" about the University of Michigan.'
    )
    assert result.template == (
        'Write a poem called "<fi>a title or quoted phrase</fi>" about <fi>an organization</fi>.'
    )


def test_a_repeated_entity_is_one_variable():
    result = rules_genericize(
        "Is Kyoto colder than Osaka in winter, and how should I dress for Kyoto?"
    )
    first, second, third = slot_descriptions(result.template)
    assert first == third
    assert second != first
    assert "Kyoto" not in result.template


def test_a_surname_after_the_full_name_is_the_same_variable():
    result = rules_genericize("Why did Nikola Tesla leave Edison, and what did Tesla do next?")
    descriptions = slot_descriptions(result.template)
    assert descriptions[0] == descriptions[2] == "a person"
    assert descriptions[1] != "a person"


def test_different_entities_of_one_kind_get_different_descriptions():
    result = rules_genericize("Compare Python and Java for web development.")
    first, second = slot_descriptions(result.template)
    assert second == "another " + first.split(" ", 1)[1]
    assert result.compatible_document_description.startswith("A comparison")


def test_the_number_of_variables_is_capped():
    result = rules_genericize(
        "Plan a trip to Lisbon, Porto, Madrid, Seville, Granada, Valencia, Barcelona and Bilbao."
    )
    assert len(set(slot_descriptions(result.template))) == MAX_SLOTS
    assert result.template.startswith("Plan a trip to <fi>")


@pytest.mark.parametrize("query", ["What is the meaning of life?", "how long to boil an egg"])
def test_a_query_with_nothing_specific_is_rejected(query):
    with pytest.raises(TemplateError) as caught:
        rules_genericize(query)
    assert caught.value.reason == "no_tags"


SPECIFIC_QUERIES = [
    ("What did Nikola Tesla invent in 1891?", ["Nikola", "Tesla", "1891"]),
    ("How do I bake sourdough bread at home?", ["sourdough"]),
    ("Tell me why the Roman Empire fell", ["Roman Empire", "Roman"]),
    ("Dr. Smith says my thrombosis needs surgery. What are the risks?", ["Smith", "thrombosis"]),
    ('Summarize "Pride and Prejudice" in 50 words', ["Pride and Prejudice", "Prejudice", "50"]),
    ("best sushi restaurants in Tokyo under $40", ["Tokyo", "$40", "40"]),
]


@pytest.mark.parametrize(("query", "specifics"), SPECIFIC_QUERIES)
def test_rules_output_is_valid_and_never_repeats_the_specifics(query, specifics):
    result = rules_genericize(query)
    validate_template(result.template, result.compatible_document_description, query)
    assert count_tags(result.template) >= 1
    for specific in specifics:
        pattern = rf"(?<!\w){re.escape(specific)}(?!\w)"
        assert not re.search(pattern, result.compatible_document_description, re.IGNORECASE)
        assert not re.search(pattern, result.template)


def test_rules_are_deterministic():
    queries = [query for query, _ in SPECIFIC_QUERIES]
    assert [rules_genericize(q) for q in queries] == [rules_genericize(q) for q in queries]


# --- rules engine on real, lowercase queries --------------------------------------------------


@pytest.mark.parametrize(
    ("query", "template"),
    [
        (
            "who played the joker in the dark knight",
            (
                "who played <fi>a character in a TV series or film</fi> in "
                "<fi>a TV series or film</fi>"
            ),
        ),
        (
            "what did nikola tesla invent in 1891",
            "what did <fi>a person</fi> invent in <fi>a year</fi>",
        ),
        ("who wrote the great gatsby", "who wrote <fi>a book or other written work</fi>"),
        (
            "best sushi restaurants in tokyo under $40",
            "best sushi restaurants in <fi>a city or country</fi> under <fi>an amount of money</fi>",
        ),
        (
            "dr. smith says my thrombosis needs surgery. what are the risks?",
            (
                "<fi>a person</fi> says my <fi>a disease or medical condition</fi> needs surgery. "
                "what are the risks?"
            ),
        ),
    ],
)
def test_lowercase_queries_get_typed_slots(query, template):
    assert rules_genericize(query).template == template


@pytest.mark.parametrize(
    ("query", "template"),
    [
        # The question asks for the character: only the actor and the film are values.
        (
            "what character did natalie portman play in star wars?",
            "what character did <fi>a person</fi> play in <fi>a TV series or film</fi>?",
        ),
        # Sports are played, not acted: Poland is no film.
        (
            "what sports do people play in poland?",
            "what sports do people play in <fi>a city or country</fi>?",
        ),
    ],
)
def test_the_thing_a_question_word_asks_for_is_no_slot(query, template):
    assert rules_genericize(query).template == template


@pytest.mark.parametrize(
    "text",
    [
        "As apex predators, jaguars play a crucial role in ecosystems across the Amazon.",
        "Public relations played a significant role in the success of the campaign.",
    ],
)
def test_playing_a_role_in_something_is_no_acting(text):
    """The idiom says what contributes to what: its role is no character, and what it is
    played in no film."""
    kinds = {kind for _, _, kind in filler_spans(text)}
    assert not kinds & {"a character in a TV series or film", "a TV series or film"}, kinds


def test_a_role_played_in_a_title_is_acting():
    text = "Leonardo DiCaprio played the lead role in Titanic, which James Cameron directed."
    spans = {text[start:end]: kind for start, end, kind in filler_spans(text)}
    assert spans["Titanic"] == "a TV series or film"
    assert "the lead role" not in spans


# WebQuestions' queries are all in lower case, where the small model finds these names but not
# their kind (each was "a named entity such as a person, place or product").
@pytest.mark.parametrize(
    ("query", "template"),
    [
        ("what awards has louis sachar won?", "what awards has <fi>a person</fi> won?"),
        ("where is santa clara university?", "where is <fi>an organization</fi>?"),
        (
            "who was the leader of the ussr in 1948?",
            "who was the leader of <fi>a city or country</fi> in <fi>a year</fi>?",
        ),
        ("where the missouri river ends?", "where <fi>a place</fi> ends?"),
    ],
)
def test_names_in_a_lowercase_query_get_the_kind_they_have_capitalised(query, template):
    assert rules_genericize(query).template == template


def _kinds(templates: list[str]) -> list[str]:
    return [
        description.removeprefix("another ").removeprefix("a ").removeprefix("an ")
        for template in templates
        for description in slot_descriptions(template)
    ]


def test_most_lowercased_ifbench_queries_become_valid_templates_with_typed_slots():
    # Measured with bench.genericizer (bench/results/*_cpu_genericizer.md): 85 % valid, 41 % of
    # slots on the topic fallback and 4 % on the entity one; the word-list rules made 81 % and
    # 67 %.
    queries = [row["query"].lower() for row in ifbench_queries()]
    templates = []
    for query in queries:
        found = parse_output(rules_output(query))
        try:
            validate_template(found.template, found.compatible_document_description, query)
        except TemplateError:
            continue
        templates.append(found.template)
    assert len(templates) >= 0.82 * len(queries)
    kinds = _kinds(templates)
    fallbacks = {TOPIC_DESCRIPTION.split(" ", 1)[1], ENTITY_DESCRIPTION.split(" ", 1)[1]}
    assert sum(kind in fallbacks for kind in kinds) <= 0.55 * len(kinds)


PASSAGE = (
    "The Dark Knight is a 2008 superhero film directed by Christopher Nolan, who co-wrote the "
    "screenplay with his brother Jonathan Nolan. Heath Ledger played the Joker, a role that "
    "earned him a posthumous Academy Award. The film was shot largely in Chicago and premiered "
    "in New York City on July 14, 2008, before grossing over $1 billion worldwide."
)


def test_slot_fillers_are_typed_in_the_slot_vocabulary():
    fillers = dict(slot_fillers(PASSAGE))
    assert fillers["Christopher Nolan"] == fillers["Heath Ledger"] == "a person"
    assert fillers["2008"] == "a year"
    assert fillers["Chicago"] == "a city or country"
    assert fillers["July 14, 2008"] == "a date"
    assert fillers["$1 billion"] == "an amount of money"
    # A filler's kind is a description the genericizer writes, so the two can be matched.
    slot_kinds = set(
        slot_descriptions(rules_genericize("what did nikola tesla invent in 1891").template)
    )
    assert slot_kinds <= set(fillers.values())
    generic = {TOPIC_DESCRIPTION, ENTITY_DESCRIPTION}
    assert sum(kind in generic for kind in fillers.values()) < len(fillers) / 4


def test_word_lists_other_modules_use_stay_lowercase_frozensets():
    for words in (STOPWORDS, REQUEST_VERBS):
        assert isinstance(words, frozenset)
        assert all(word == word.lower() for word in words)
    assert {"the", "of", "don't", "it's"} <= STOPWORDS
    assert "explain" in REQUEST_VERBS


def test_a_name_has_one_kind_in_a_document_the_one_its_mentions_mostly_have():
    """English Wikipedia's "Afghanistan": in a list after "Herat" the small model reads
    "Kandahar" as a people; the document calls it a city twice more, and a city it stays."""
    text = (
        "Other historical places include the cities of Herat, Kandahar, Ghazni, Mazar-i-Sharif, "
        "and Zarang. A cloak reputedly worn by Islam's prophet Muhammad is kept inside the Shrine "
        "of the Cloak in Kandahar, a city founded by Alexander and the first capital of "
        "Afghanistan. In 2009 and 2010, a 5,000 OLPC – One Laptop Per Child schools deployment "
        "took place in Kandahar with funding from an anonymous foundation."
    )
    kinds = [kind for start, end, kind in filler_spans(text) if text[start:end] == "Kandahar"]
    assert kinds == ["a city or country"] * 3


def test_a_filler_ends_at_a_dash_set_off_by_spaces():
    """A ShareGPT answer's list: the small parser ran "Pennsylvania - home" into one noun chunk,
    which filled "what is a city in <fi>a city or country</fi>?" as "... in Pennsylvania - home?".
    A hyphen inside a word is no such dash."""
    text = (
        "6. Santa Fe, New Mexico - known for its traditional adobe architecture.\n"
        "7. Philadelphia, Pennsylvania - home to the Liberty Bell, Independence Hall, and numerous "
        "museums.\n"
        "9. Asheville, North Carolina - home to the Biltmore Estate, a grand chateau-style mansion "
        "built by George Vanderbilt in the late 1800s."
    )
    fillers = dict(slot_fillers(text))
    assert fillers["Pennsylvania"] == fillers["North Carolina"] == "a city or country"
    assert not [surface for surface in fillers if " - " in surface]
    assert "a grand chateau-style mansion" in fillers


def test_an_entity_across_a_dash_set_off_by_spaces_fills_nothing():
    """The small model reads a list item's term and the first word of its explanation as one
    landmark ("Cognitive Load - Like"), which filled "what films has <fi>a person</fi> been in?"."""
    text = (
        "14. Cognitive Load - Like a complex plot in a film, cognitive load can overwhelm users "
        "if it is not managed well.\n15. Accessibility - Accessibility is like subtitles in a "
        "foreign film, ensuring that all users can understand and enjoy the experience."
    )
    fillers = dict(slot_fillers(text))
    assert not [surface for surface in fillers if "Load" in surface or "Accessibility" in surface]
