"""Stage C, the instantiator: its prompt, its parser on noisy model outputs, the document window,
the grounding checks, the offline `rules` engine with the real MiniLM embedder, and the
collection of outputs into kept pairs and rejects."""

import json
import re
from collections import Counter

import pytest
from sentence_transformers import SentenceTransformer

from fi_method.llm_output import OutputParseError
from fi_method.roles import MemoizedEmbed
from fi_method.samples import wikipedia_articles
from fi_method.synthesis.excerpts import ExcerptError
from fi_method.synthesis.instantiator import (
    RELEASED_INSTANTIATOR,
    GroundingError,
    Instantiation,
    build_messages,
    document_window,
    ground,
    parse_output,
    prompt_style_for,
)
from fi_method.synthesis.pairs import (
    RULES_BATCH_DOCUMENTS,
    collect_instantiations,
    instantiate_by_rank,
)
from fi_method.synthesis.rules_instantiator import (
    REQUEST_LEAD,
    names_many,
    points_back,
    reads_as_plural,
    rules_instantiate,
    usable_filler,
)
from fi_method.templating.templates import FI_CLOSE, FI_OPEN, slot_descriptions
from fi_method.text import content_hash
from fi_resources.models import MINILM, sentence_transformer_source

TEMPLATE = "When was <fi>a bridge</fi> in <fi>a city</fi> opened?"
DOCUMENT = (
    "The Tower Bridge is a bridge in London. Construction started in 1886 and took eight years. "
    "The bridge was opened on 30 June 1894 by the Prince of Wales. It crosses the River Thames "
    "close to the Tower of London."
)
INSTRUCTION = "When was the Tower Bridge in London opened?"
ANSWER = "<excerpt>The bridge was opened<...>the Prince of Wales.</excerpt>"
OUTPUT = json.dumps({"instruction": INSTRUCTION, "answer": ANSWER})


# --- prompt ---------------------------------------------------------------------------------


def test_bare_prompt_is_one_user_message_holding_template_and_document_as_json():
    messages = build_messages(TEMPLATE, DOCUMENT, "bare")
    assert len(messages) == 1
    assert messages[0]["role"] == "user"
    assert json.loads(messages[0]["content"]) == {
        "instruction_template": TEMPLATE,
        "document": DOCUMENT,
    }


def test_instructed_prompt_has_a_system_message_a_worked_example_and_ends_with_the_input():
    messages = build_messages(TEMPLATE, DOCUMENT, "instructed")
    assert [message["role"] for message in messages] == ["system", "user", "assistant", "user"]
    for needle in (FI_OPEN, "<excerpt>", "null", '"instruction"', '"answer"'):
        assert needle in messages[0]["content"]
    assert messages[-1] == build_messages(TEMPLATE, DOCUMENT, "bare")[0]


def test_instructed_worked_example_is_itself_a_grounded_answer():
    _, example_input, example_output, _ = build_messages(TEMPLATE, DOCUMENT, "instructed")
    example = json.loads(example_input["content"])
    parsed = parse_output(example_output["content"])
    assert FI_OPEN not in parsed.instruction
    answer, ratio = ground(parsed, example["document"])
    assert "<excerpt>" not in answer
    assert ratio >= 0.8


def test_unknown_prompt_style_is_refused():
    with pytest.raises(ValueError):
        build_messages(TEMPLATE, DOCUMENT, "chatty")


@pytest.mark.parametrize(
    ("model", "style"),
    [
        (RELEASED_INSTANTIATOR, "bare"),
        ("/models/fineinstructions/template_instantiator", "bare"),
        ("checkpoints\\Template_Instantiator\\", "bare"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "instructed"),
        ("someone/template_instantiator_v2", "instructed"),
    ],
)
def test_prompt_style_follows_the_model(model, style):
    assert prompt_style_for(model) == style


# --- output parser --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        OUTPUT,
        f"```json\n{OUTPUT}\n```",
        f"Sure, here is the instantiation:\n```json\n{OUTPUT}\n```\nHope this helps!",
        f"{OUTPUT}\n\nNote: {{the answer is",
        json.dumps({"instantiated_instruction": INSTRUCTION, "response": ANSWER}),
        json.dumps({"instruction": f"  {INSTRUCTION}\n", "answer": f" {ANSWER} "}),
    ],
)
def test_parser_finds_the_pair_in_noisy_output(text):
    assert parse_output(text) == Instantiation(INSTRUCTION, ANSWER)


@pytest.mark.parametrize(
    "text",
    [
        "null",
        "  null\n",
        "Null",
        "```json\nnull\n```",
        "null\n\nThe document is about something else.",
        "The template does not fit this document.\nnull",
    ],
)
def test_null_means_the_template_does_not_fit(text):
    assert parse_output(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I cannot fill this template from the document.", "no_json"),
        ("nullify", "no_json"),
        ("", "no_json"),
        (
            '{"instruction": "When was the Tower Bridge opened?", "answer": "<excerpt>The',
            "invalid_json",
        ),
        ("```json\n{instruction: 'x', answer: 'y'}\n```", "invalid_json"),
        (json.dumps({"instruction": INSTRUCTION}), "missing_field"),
        (json.dumps({"answer": ANSWER}), "missing_field"),
        (json.dumps({"question": INSTRUCTION, "reply": ANSWER}), "missing_field"),
        (json.dumps({"instruction": 7, "answer": ANSWER}), "not_a_string"),
        (json.dumps({"instruction": INSTRUCTION, "answer": None}), "not_a_string"),
        (json.dumps({"instruction": INSTRUCTION, "answer": [ANSWER]}), "not_a_string"),
    ],
)
def test_parser_failures_carry_a_reason(text, reason):
    with pytest.raises(OutputParseError) as caught:
        parse_output(text)
    assert caught.value.reason == reason


# --- document window ------------------------------------------------------------------------

LONG_DOCUMENT = " ".join(
    f"Sentence {i} of the long report describes item {i} in some detail." for i in range(300)
)
LONG_DOCUMENT_IN_PARAGRAPHS = "\n\n".join(
    " ".join(f"Sentence {i} of the report describes item {i}." for i in range(start, start + 4))
    for start in range(0, 300, 4)
)


def test_a_short_document_is_seen_whole():
    assert document_window(DOCUMENT, "The bridge was opened", max_chars=1_000) == DOCUMENT
    assert document_window(DOCUMENT, "not in the document") == DOCUMENT


@pytest.mark.parametrize("document", [LONG_DOCUMENT, LONG_DOCUMENT_IN_PARAGRAPHS])
@pytest.mark.parametrize("item", [0, 3, 150, 297, 299])
def test_a_long_document_is_cut_around_the_chunk(document, item):
    chunk = f"Sentence {item} of the"
    assert document.count(chunk) == 1
    window = document_window(document, chunk, max_chars=1_500)
    assert len(window) <= 1_500
    assert chunk in window
    assert window in document
    # Cut at sentence or paragraph breaks: it starts with a sentence and ends with one.
    assert window.startswith("Sentence ")
    assert window.endswith(".")


def test_a_chunk_not_in_the_document_still_gets_a_window_of_max_chars():
    window = document_window(LONG_DOCUMENT, "a chunk from elsewhere", max_chars=1_500)
    assert 1_000 < len(window) <= 1_500
    assert window in LONG_DOCUMENT


# --- grounding ------------------------------------------------------------------------------


def test_grounding_expands_excerpts_against_the_document():
    answer, ratio = ground(Instantiation(INSTRUCTION, ANSWER), DOCUMENT)
    assert answer == "The bridge was opened on 30 June 1894 by the Prince of Wales."
    assert ratio == 1.0


def test_grounding_keeps_a_little_text_around_the_excerpts():
    instantiation = Instantiation(INSTRUCTION, f"In short: {ANSWER}")
    answer, ratio = ground(instantiation, DOCUMENT)
    assert answer.startswith("In short: The bridge was opened on 30 June 1894")
    assert 0.8 <= ratio < 1.0
    with pytest.raises(GroundingError) as caught:
        ground(instantiation, DOCUMENT, min_ratio=0.95)
    assert caught.value.reason == "low_excerpt_ratio"


INVENTED_ANSWER = (
    "It opened a long time ago, I believe, after many years of careful work by a large team of "
    "engineers and builders from all over the country."
)


@pytest.mark.parametrize(
    ("instruction", "answer", "reason"),
    [
        ("When was <fi>a bridge</fi> in London opened?", ANSWER, "unfilled_slot"),
        ("When was the bridge in </fi> opened?", ANSWER, "unfilled_slot"),
        ("", ANSWER, "empty_instruction"),
        (INSTRUCTION, "   ", "empty_answer"),
        (
            INSTRUCTION,
            INVENTED_ANSWER,
            "low_excerpt_ratio",
        ),
    ],
)
def test_ungrounded_pairs_are_rejected_with_a_reason(instruction, answer, reason):
    with pytest.raises(GroundingError) as caught:
        ground(Instantiation(instruction, answer), DOCUMENT)
    assert caught.value.reason == reason


def test_an_excerpt_missing_from_the_document_is_rejected():
    answer = "<excerpt>The bridge was closed<...>the Prince of Wales.</excerpt>"
    with pytest.raises(ExcerptError) as caught:
        ground(Instantiation(INSTRUCTION, answer), DOCUMENT)
    assert caught.value.reason == "excerpt_not_found"


def test_an_excerpt_matching_two_spans_is_rejected():
    document = (
        "The ferry was opened in 1894 for the workers. Years later, the ferry was opened again "
        "to tourists in 1910."
    )
    answer = "<excerpt>ferry was opened<...>in 1910.</excerpt>"
    with pytest.raises(ExcerptError) as caught:
        ground(Instantiation("When did the ferry open?", answer), document)
    assert caught.value.reason == "excerpt_ambiguous"


# --- rules engine with the real MiniLM embedder ---------------------------------------------

CHUNK = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centrepiece of "
    "the 1889 World's Fair. Although initially criticised by some of France's leading artists and "
    "intellectuals for its design, it has since become a global cultural icon of France. "
    "The tower is 330 metres tall, about the same height as an 81-storey building, and was the "
    "tallest man-made structure in the world until the Chrysler Building in New York City was "
    "finished in 1930."
)
# Templates whose own words ("designed", "built", "tall", "design") the passage says, with a
# value of each slot's kind where it says them.
RULES_TEMPLATES = [
    "When was <fi>a landmark</fi> finished in <fi>a city</fi>?",
    "Where in <fi>a city</fi> is the tower?",
    "What is <fi>a place</fi> known for?",
    "Describe the tower in <fi>a city</fi>.",
    "Whose company designed the tower named after <fi>a person</fi>?",
]


# The tagger calls the Eiffel Tower a place; the Chrysler Building, the landmark the passage names
# beside "tallest", is what the tower was taller than, not tall itself.
REPEATED_SLOT = "Is <fi>a place</fi> tall, and how tall is <fi>a place</fi>?"


@pytest.fixture(scope="module")
def embed():
    model = SentenceTransformer(sentence_transformer_source(MINILM))
    return lambda texts: model.encode(texts, normalize_embeddings=True)


@pytest.fixture(scope="module")
def rules_output(embed):
    """The rules engine's output for each template on CHUNK, computed once (CPU embedding)."""
    return {
        template: rules_instantiate(template, CHUNK, embed)
        for template in [*RULES_TEMPLATES, REPEATED_SLOT]
    }


def filled_values(template: str, instruction: str) -> list[str]:
    """The value standing in each slot of `template` in `instruction`, in order."""
    pattern = "".join(
        "(.+?)" if piece.startswith(FI_OPEN) else re.escape(piece)
        for piece in re.split(rf"({re.escape(FI_OPEN)}.*?{re.escape(FI_CLOSE)})", template)
    )
    found = re.fullmatch(pattern, instruction)
    assert found is not None, f"{instruction!r} does not follow {template!r}"
    return list(found.groups())


def test_the_chunk_is_a_realistic_paragraph():
    assert 60 <= len(CHUNK.split()) <= 150


@pytest.mark.parametrize("template", RULES_TEMPLATES)
def test_rules_output_fills_every_slot_from_the_chunk(rules_output, template):
    parsed = parse_output(rules_output[template])
    assert parsed is not None
    assert FI_OPEN not in parsed.instruction and FI_CLOSE not in parsed.instruction
    values = filled_values(template, parsed.instruction)
    assert len(values) == len(slot_descriptions(template))
    for value in values:
        # Verbatim, but for the case of a leading article inside the sentence ("the Eiffel Tower").
        assert value and value.lower() in CHUNK.lower()


@pytest.mark.parametrize("template", RULES_TEMPLATES)
def test_rules_answer_is_grounded_in_the_chunk(rules_output, template):
    answer, ratio = ground(parse_output(rules_output[template]), CHUNK)
    assert ratio >= 0.8
    assert "<excerpt>" not in answer
    # A long excerpt, as the released instantiator copies: here most of the passage.
    assert len(answer.split()) >= 0.6 * len(CHUNK.split())


@pytest.mark.parametrize("template", RULES_TEMPLATES)
def test_rules_instruction_is_about_its_answer(rules_output, template):
    """Every slot value is a span of the excerpt that answers it, not of elsewhere in the
    passage: an instruction about one thing is never answered with text about another."""
    parsed = parse_output(rules_output[template])
    answer, _ = ground(parsed, CHUNK)
    for value in filled_values(template, parsed.instruction):
        assert value.lower() in answer.lower()


def test_a_repeated_slot_description_gets_one_value(rules_output):
    instruction = parse_output(rules_output[REPEATED_SLOT]).instruction
    first, second = filled_values(REPEATED_SLOT, instruction)
    assert first == second


def test_different_slot_descriptions_get_different_values(rules_output):
    template = RULES_TEMPLATES[0]
    first, second = filled_values(template, parse_output(rules_output[template]).instruction)
    assert first != second


def test_a_request_is_answered_with_a_lead_and_a_question_without(rules_output):
    request = parse_output(rules_output["Describe the tower in <fi>a city</fi>."])
    question = parse_output(rules_output["Where in <fi>a city</fi> is the tower?"])
    assert request.answer.startswith(REQUEST_LEAD)
    assert not question.answer.startswith(REQUEST_LEAD)


def test_the_answer_starts_where_the_template_matched_and_reads_on_into_the_document(embed):
    """The local vector that retrieved a template points at its answer (the paper's Pearson
    0.99): an anchor late in the passage starts the excerpt late; a passage shorter than an
    answer runs on into the document around it."""
    before = (
        "The Champ de Mars is a large public green space in Paris, between the tower and the "
        "Ecole Militaire. It was named after the Campus Martius in Rome."
    )
    after = (
        "Today the Eiffel Tower is visited by about seven million people a year, more than any "
        "other paid monument in the world. Its three levels hold restaurants, shops and an observation deck. "
        "Visitors climb the stairs to the first and second levels or take one of the lifts, and "
        "only lifts reach the top. The tower is repainted every seven years, with about sixty "
        "tonnes of paint, to protect the iron from rust. At night it is lit by twenty thousand "
        "bulbs that sparkle for five minutes every hour. Radio and television antennas on its top "
        "have made it taller than it was at its opening, and it now reaches 330 metres. In 1957 "
        "an antenna was added, and in 2022 another one raised it by six metres. "
        "The tower has inspired many copies, among them a half-scale one in Las Vegas and "
        "another in Tokyo that is painted white and orange for air safety. Engineers still "
        "study its design, which resists wind by its shape rather than its weight: at the top it "
        "sways no more than a few centimetres in a storm. Its iron expands in the summer sun, "
        "and the top moves away from the sun by up to eighteen centimetres. The original "
        "lifts of 1889 still run in the east and west pillars, restored and fitted with new "
        "machinery. Every year the tower hosts exhibitions, concerts and a New Year fireworks "
        "show seen by crowds on the Champ de Mars and along the banks of the Seine."
    )
    document = f"{before}\n\n{CHUNK}\n\n{after}"
    early = parse_output(
        rules_instantiate("What is <fi>a place</fi> known for?", CHUNK, embed, 0.0, document)
    )
    late = parse_output(
        rules_instantiate("How tall is <fi>a place</fi>?", CHUNK, embed, 5 / 6, document)
    )
    early_answer, early_ratio = ground(early, document)
    late_answer, _ = ground(late, document)
    assert early_answer.startswith("The Eiffel Tower is a wrought-iron lattice tower")
    assert "wrought-iron lattice" not in late_answer
    assert late_answer in document and "seven million people" in late_answer
    assert len(early_answer.split()) > len(CHUNK.split()) and early_ratio >= 0.8


@pytest.mark.parametrize(
    "chunk", ["Gustave Eiffel was an engineer.", "The tower in Paris is tall."]
)
def test_a_chunk_too_short_to_answer_gives_null(embed, chunk):
    output = rules_instantiate("Who designed <fi>a landmark</fi>?", chunk, embed)
    assert output == "null: the passage is too short to answer from"
    assert parse_output(output) is None


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        # The passage names a landmark but never speaks of floors: "how many floors is France".
        ("How many floors does <fi>a landmark</fi> have?", 'say "floors"'),
        # It speaks of height, but holds no disease to fill the slot with.
        (
            "What is the height of <fi>a disease or medical condition</fi>?",
            'no span of the passage fits "a disease or medical condition"',
        ),
        # "what is there to do in X": nothing the template says could be looked for.
        ("What is there to do in <fi>a city</fi>?", "say nothing the passage could be checked"),
        # A number or a date names nothing a passage is about: "Summarize for a 5 years old".
        ("Tell me about <fi>a quantity</fi>.", "numbers or dates, which name no subject"),
        (
            "Summarize for a <fi>a length of time</fi> old",
            "numbers or dates, which name no subject",
        ),
        # Asked about a value alone, the excerpt must be about that value: Paris is named once.
        ("Tell me about <fi>a city</fi>.", "not about the value"),
    ],
)
def test_a_template_the_passage_does_not_support_gives_null_with_the_reason(
    embed, template, reason
):
    output = rules_instantiate(template, CHUNK, embed)
    assert parse_output(output) is None
    assert output.startswith("null: ") and reason in output


def test_a_slot_is_filled_only_with_a_value_of_its_kind(embed):
    """A place is no city: "Where in <fi>a city</fi> is the tower?" takes Paris, though the
    tagger's "place", the Eiffel Tower, sits closer to "tower"."""
    template = "Where in <fi>a city</fi> is the tower?"
    parsed = parse_output(rules_instantiate(template, CHUNK, embed))
    [value] = filled_values(template, parsed.instruction)
    assert value in ("Paris", "France")


def test_a_value_must_stand_next_to_the_templates_words(embed):
    """The passage says "built" of the tower and names Paris a sentence earlier: "When was the
    tower in Paris built?" is not what it says, so nothing is made."""
    output = rules_instantiate("When was the tower in <fi>a city</fi> built?", CHUNK, embed)
    assert parse_output(output) is None


def test_a_question_is_instantiated_only_where_the_passage_gives_what_it_asks(embed):
    """ "Who" asks for a person: a passage that says "designed" near a landmark but names no
    one there does not answer "who designed it"."""
    chunk = (
        "The old bridge in Paris was designed with five stone arches and a narrow deck. "
        "Its piers stand on oak piles driven into the riverbed, and floods have never moved them. "
        "The Pont Neuf in Paris is the oldest standing bridge across the Seine, and the arches of "
        "its two spans are still those laid when the bridge was finished, long before cars."
    )
    output = rules_instantiate("Who designed the bridge in <fi>a city</fi>?", chunk, embed)
    assert output == "null: the passage does not give a person where it says so"


# A passage that names people and places beside the words of templates it does not answer.
NOVEL_CHUNK = (
    "When John Galt is captured by the looters, Ferris uses the device on Galt, but it breaks "
    "down before extracting the information Ferris wants from Galt. The Tsimshian people came to "
    "Alaska in 1887, when President Grover Cleveland granted them land on Annette Island. Ferris represents the group which uses brute force to keep power."
)


@pytest.mark.parametrize(
    "template",
    [
        # Galt is what the device is used on, and Ferris the one who uses it: no one "uses" them.
        "Who uses <fi>a person</fi>?",
        # The Tsimshian came *to* Alaska: nothing says who came *from* it.
        "What famous people came from <fi>a city or country</fi>?",
    ],
)
def test_a_value_must_be_tied_to_the_templates_words_as_the_template_ties_them(embed, template):
    output = rules_instantiate(template, NOVEL_CHUNK, embed)
    assert parse_output(output) is None, output


@pytest.mark.parametrize(
    ("template", "chunk"),
    [
        # The person asked for is part of the value: the question answers itself.
        (
            "Who wrote <fi>a book or other written work</fi>?",
            (
                "He also became a Vedantist in the circle of Hindu Swami Prabhavananda, and "
                "introduced Christopher Isherwood to this circle. Not long after, Huxley wrote his "
                "book on widely held spiritual values and ideas, and it sold well in many countries."
            ),
        ),
        # The passage calls the value what the question asks for: Mimouni is the vice-president.
        (
            "who was the vice president under <fi>a person</fi>?",
            (
                "Famous novelists of the 20th century include Mohammed Dib, Albert Camus, Kateb "
                "Yacine and Ahlam Mosteghanemi while Assia Djebar is widely translated. Among the "
                "important novelists of the 1980s were Rachid Mimouni, later vice-president of "
                "Amnesty International, and Tahar Djaout, murdered by an Islamist group in 1993 "
                "for his secularist views."
            ),
        ),
        # The value holds the template's own word.
        (
            "Where is <fi>an organization</fi> based?",
            (
                "Birmingham-based Compass Bancshares was acquired by Spanish-based BBVA in September "
                "2007, although the headquarters of BBVA Compass remains in Birmingham. In November "
                "2006, Regions Financial completed its merger with AmSouth Bancorporation."
            ),
        ),
        # "Where is X located" of an organization asks for a place the passage never gives.
        (
            "Where is <fi>an organization</fi> located?",
            (
                "The European Space Agency similarly uses the term astronaut for members of its "
                "Astronaut Corps. The European Space Agency trains its astronauts for long missions "
                "and sends them on the flights of its partners, as it has done for decades."
            ),
        ),
    ],
)
def test_a_question_that_answers_itself_or_is_not_answered_gives_null(embed, template, chunk):
    output = rules_instantiate(template, chunk, embed)
    assert parse_output(output) is None, output


CAPITAL = "what is the name of the capital of <fi>a city or country</fi>?"
PARIS_PASSAGE = (
    "Paris, the capital of France, is one of the most popular tourist destinations in the world. "
    "It is known for its beautiful architecture, museums, art galleries, and romantic atmosphere. "
    "Here are some of the best places to see in Paris: the Eiffel Tower, the Louvre, the "
    "cathedral of Notre-Dame and the narrow streets of Montmartre."
)
DENVER_PASSAGE = (
    "Denver is the capital and most populous city of the U.S. state of Colorado. It is located "
    "in the South Platte River Valley on the western edge of the High Plains just east of the "
    "Front Range of the Rocky Mountains. The Denver metropolitan area has a population of over 3 "
    "million people."
)
AUSTRALIA_PASSAGE = (
    "Australia has a capital that few visitors know: Canberra, a planned city built between "
    "Sydney and Melbourne as a compromise between the two rivals. It holds Parliament House, the "
    "High Court and many of the country's national museums."
)


@pytest.mark.parametrize(
    ("chunk", "instruction"),
    [
        # Paris is the capital; France is what has it.
        (PARIS_PASSAGE, "what is the name of the capital of France?"),
        # Denver is the capital, and "most populous city" names no place.
        (DENVER_PASSAGE, None),
        (AUSTRALIA_PASSAGE, "what is the name of the capital of Australia?"),
        (
            (
                "3. Italy - From Athens, you can take a ferry or flight to Italy's capital, Rome. "
                "The city is "
                "a must-see destination, known for its ancient ruins such as the Colosseum and the "
                "Roman Forum, as well as its charming piazzas and its food."
            ),
            "what is the name of the capital of Italy?",
        ),
        # Kyoto was the capital: the passage does not say what the capital of Japan is.
        (
            (
                "Travel to Kyoto, the former imperial capital of Japan, and explore its many "
                "historic and cultural landmarks. Visit famous temples like Kinkaku-ji (the Golden "
                "Pavilion) and Fushimi Inari Shrine, and stroll through the Arashiyama Bamboo Grove."
            ),
            None,
        ),
    ],
)
def test_the_value_of_the_capital_of_is_what_has_the_capital_not_the_capital(
    embed, chunk, instruction
):
    parsed = parse_output(rules_instantiate(CAPITAL, chunk, embed))
    assert (parsed and parsed.instruction) == instruction


@pytest.mark.parametrize(
    ("template", "chunk"),
    [
        # "capitalize" shares its stem with "capital", but a company that capitalizes on demand
        # has no capital city.
        (
            CAPITAL,
            (
                "Coupang can capitalize on the increasing demand for online shopping due to the "
                "pandemic by expanding into international markets, diversifying its product "
                "offerings, and integrating more payment options. However, it must be wary of "
                "competition from established e-commerce giants like Amazon and Alibaba."
            ),
        ),
        # A quiz asks the question and answers none of it.
        (
            CAPITAL,
            (
                "Here is a quiz for your class. 1. What is the capital of Australia? 2. Who is the "
                "current president of the United States? 3. What is the square root of 121? 4. "
                "What is the past tense of the verb to go? 5. What is the chemical symbol for "
                "hydrogen?"
            ),
        ),
        # "play a crucial role in" is no acting.
        (
            "who plays <fi>a character in a TV series or film</fi> in <fi>a TV series or film</fi>?",
            (
                "Jaguars are famous for their distinctive black spots, which are called rosettes. "
                "As apex predators, jaguars play a crucial role in ecosystems, keeping the numbers "
                "of deer, capybaras and caimans in check across the rainforests of Brazil and Peru."
            ),
        ),
        # A program plays a song; only a performer plays in something.
        (
            "what has <fi>a specific topic or concept</fi> played in?",
            (
                "First, we would start by defining the key functions that make up our app. In this "
                "case, we might have:\n\n1. A `playSong(song)` function that plays the given "
                "song.\n2. A `pauseSong()` function that pauses playback of the current song.\n3. A "
                "`stopSong()` function that stops playback of the current song.\n4. A "
                "`addToPlaylist(playlist, song)` function that adds the given song to the given "
                "playlist."
            ),
        ),
        (
            "what has <fi>a specific topic or concept</fi> played in?",
            (
                "Recent research has suggested a connection between entanglement and black holes, "
                "with some physicists suggesting that entanglement may play a key role in the "
                "nature of space-time near a black hole. Entanglement remains one of the least "
                "understood ideas of quantum mechanics."
            ),
        ),
    ],
)
def test_a_passage_that_only_shares_the_templates_words_gives_null(embed, template, chunk):
    output = rules_instantiate(template, chunk, embed)
    assert parse_output(output) is None, output


def test_a_value_tied_as_the_template_ties_it_is_kept(embed):
    """ "Who captured <fi>a person</fi>?": Galt is captured in the passage, by the looters."""
    parsed = parse_output(rules_instantiate("Who captured <fi>a person</fi>?", NOVEL_CHUNK, embed))
    assert parsed is not None and parsed.instruction == "Who captured John Galt?"


@pytest.mark.parametrize(
    ("value", "points"),
    [
        ("the title", True),
        ("their support", True),
        ("this method", True),
        ("the Eiffel Tower", False),
        ("the mitochondria", False),
        ("free markets", False),
    ],
)
def test_a_value_that_points_back_into_its_passage_is_no_filler(value, points):
    assert points_back(value) is points
    assert usable_filler(value) is not points


@pytest.mark.parametrize(
    ("value", "usable"), [("the Kingdom of the", False), ("Vitamin A", True), ("Paris", True)]
)
def test_a_value_cut_short_on_a_function_word_is_no_filler(value, usable):
    assert usable_filler(value) is usable


@pytest.mark.parametrize("template", [RULES_TEMPLATES[0], REPEATED_SLOT])
def test_rules_output_is_deterministic(embed, rules_output, template):
    assert rules_instantiate(template, CHUNK, embed) == rules_output[template]


# --- collecting outputs into pairs ----------------------------------------------------------


def request(chunk_id: str, template_id: str = "t1", doc_id: str = "d1") -> dict:
    return {
        "doc_id": doc_id,
        "chunk_id": chunk_id,
        "template_id": template_id,
        "query_id": f"q-{template_id}",
        "similarity": 0.5,
        "source": "unit",
    }


def collect(requests, outputs):
    return collect_instantiations(
        requests, outputs, {"d1": DOCUMENT, "d2": DOCUMENT}, 0.8, "rules", "minilm"
    )


def test_collect_keeps_grounded_pairs_and_rejects_the_rest_with_reasons():
    unfilled = json.dumps({"instruction": TEMPLATE, "answer": ANSWER})
    requests = [request("c1"), request("c2", "t2"), request("c3", "t3"), request("c4")]
    kept, rejects, instantiated = collect(requests, [OUTPUT, "null", unfilled, OUTPUT])

    assert instantiated == 3  # parsed and not null, grounded or not
    assert [(r["item_id"], r["reason"]) for r in rejects] == [
        ("d1:t2", "template_does_not_fit"),
        ("d1:t3", "unfilled_slot"),
        ("d1:t1", "duplicate_pair"),
    ]
    assert all(r["source"] == "unit" and r["detail"] for r in rejects)
    [pair] = kept
    assert pair["chunk_id"] == "c1"
    assert pair["instruction"] == INSTRUCTION
    assert pair["answer"] == "The bridge was opened on 30 June 1894 by the Prince of Wales."
    assert pair["excerpt_ratio"] == 1.0
    assert (pair["engine"], pair["model"], pair["query_id"]) == ("rules", "minilm", "q-t1")
    assert pair["pair_id"] in rejects[-1]["detail"]


def test_unparseable_outputs_are_rejected_and_not_counted_as_instantiated():
    kept, rejects, instantiated = collect(
        [request("c1"), request("c2", "t2")], ["no json here", '{"instruction": "x"}']
    )
    assert kept == []
    assert instantiated == 0
    assert [r["reason"] for r in rejects] == ["no_json", "missing_field"]


def test_pair_id_is_stable_and_depends_on_document_template_and_content():
    first, _, _ = collect([request("c1")], [OUTPUT])
    again, _, _ = collect([request("c9")], [OUTPUT])
    other_document, _, _ = collect([request("c1", doc_id="d2")], [OUTPUT])
    other_template, _, _ = collect([request("c1", template_id="t2")], [OUTPUT])
    pair_id = first[0]["pair_id"]
    assert pair_id == again[0]["pair_id"]
    assert pair_id == content_hash("d1", "t1", INSTRUCTION, first[0]["answer"])
    assert other_document[0]["pair_id"] != pair_id
    assert other_template[0]["pair_id"] != pair_id


def ranked(
    chunk_id: str, vector_index: int, rank: int, template: str, template_id: str, doc_id="d1"
) -> dict:
    return {
        **request(chunk_id, template_id, doc_id),
        "vector_index": vector_index,
        "rank": rank,
        "template": template,
        "chunk": CHUNK,
        "anchor": 0.0,
    }


def test_a_vector_tries_its_alternates_until_one_fits(embed):
    """Rank 0 does not fit the passage (it never speaks of floors); the alternate behind it does,
    and the vector gets that one pair; the alternate of a vector whose first template fit is
    never tried."""
    requests = [
        ranked("c1", 0, 0, "How many floors does <fi>a landmark</fi> have?", "floors"),
        ranked("c1", 1, 0, "What is <fi>a place</fi> known for?", "known"),
        ranked("c1", 0, 1, "Where in <fi>a city</fi> is the tower?", "built"),
        ranked("c1", 1, 1, "Describe the tower in <fi>a city</fi>.", "design"),
    ]
    asked: list[list[str]] = []

    def instantiate(batch):
        asked.append([r["template_id"] for r in batch])
        return [rules_instantiate(r["template"], r["chunk"], embed) for r in batch]

    kept, rejects, instantiated, tried = instantiate_by_rank(
        requests, instantiate, {"d1": CHUNK}, 0.8, "rules", "minilm"
    )
    assert asked == [["floors", "known"], ["built"]]
    assert sorted(pair["template_id"] for pair in kept) == ["built", "known"]
    assert (instantiated, tried) == (2, 3)
    assert [(r["item_id"], r["reason"]) for r in rejects] == [
        ("d1:floors", "template_does_not_fit")
    ]
    assert 'say "floors"' in rejects[0]["detail"]


def test_a_template_makes_at_most_its_cap_of_pairs_in_a_shard(embed):
    template = "What is <fi>a place</fi> known for?"
    requests = [ranked(f"c{i}", 0, 0, template, "known", f"d{i}") for i in range(3)]
    requests += [ranked("c2", 0, 1, "Where in <fi>a city</fi> is the tower?", "built", "d2")]

    def instantiate(batch):
        return [rules_instantiate(r["template"], r["chunk"], embed) for r in batch]

    kept, rejects, _, _ = instantiate_by_rank(
        requests,
        instantiate,
        {f"d{i}": CHUNK for i in range(3)},
        0.8,
        "rules",
        "minilm",
        max_template_uses=1,
    )
    # c0 makes the template's one pair; c1's and c2's are past the cap, so c2's vector tries its
    # alternate (c1 has none).
    assert [(pair["chunk_id"], pair["template_id"]) for pair in kept] == [
        ("c0", "known"),
        ("c2", "built"),
    ]
    assert [(r["item_id"], r["reason"]) for r in rejects] == [
        ("d1:known", "template_overused"),
        ("d2:known", "template_overused"),
    ]


def test_batches_of_documents_share_the_cap_and_never_make_a_pair_twice(embed):
    """A shard instantiated a document at a time, passing every batch the same `uses` and
    `seen`: the cap holds across the shard (d2's template is used up by d0 and d1, so its vector
    goes to its alternate untried), and the pairs are the ones one call over the whole shard
    makes when the batches consume the cap in the same order."""
    template = "What is <fi>a place</fi> known for?"
    requests = [ranked(f"c{i}", 0, 0, template, "known", f"d{i}") for i in range(3)]
    requests += [ranked("c2", 1, 1, "Where in <fi>a city</fi> is the tower?", "built", "d2")]
    documents = {f"d{i}": CHUNK for i in range(3)}

    def instantiate(batch):
        return [rules_instantiate(r["template"], r["chunk"], embed) for r in batch]

    def run(batches):
        uses, seen, kept, rejects = Counter(), set(), [], []
        for batch in batches:
            made, dropped, _, _ = instantiate_by_rank(
                batch, instantiate, documents, 0.8, "rules", "minilm", 2, uses, seen
            )
            kept, rejects = kept + made, rejects + dropped
        return [(p["chunk_id"], p["template_id"]) for p in kept], rejects, uses

    by_document = [[r for r in requests if r["doc_id"] == f"d{i}"] for i in range(3)]
    kept, rejects, uses = run(by_document)
    assert kept == [("c0", "known"), ("c1", "known"), ("c2", "built")]
    assert rejects == []
    assert uses == {"known": 2, "built": 1}
    # Without the shared counts every batch would start afresh and d2 would use "known" again.
    alone = [
        instantiate_by_rank(b, instantiate, documents, 0.8, "rules", "minilm", 2)[0]
        for b in by_document
    ]
    assert sum(p["template_id"] == "known" for made in alone for p in made) == 3
    assert run([requests])[0] == kept


def test_collect_refuses_mismatched_lengths():
    with pytest.raises(ValueError):
        collect([request("c1"), request("c2")], [OUTPUT])


def test_memoized_embed_computes_each_text_once_and_keeps_the_order(embed):
    asked = []

    def counting(texts):
        asked.append(list(texts))
        return embed(texts)

    cached = MemoizedEmbed(counting)
    first = cached(["a tower", "a bridge", "a tower"])
    second = cached(["a bridge", "a river"])
    assert asked == [["a tower", "a bridge"], ["a river"]]
    assert first.shape == (3, 384) and (first[0] == first[2]).all()
    assert (second[0] == first[1]).all()


def test_a_bounded_memo_forgets_the_texts_asked_for_longest_ago(embed):
    asked = []

    def counting(texts):
        asked.append(list(texts))
        return embed(texts)

    cached = MemoizedEmbed(counting, most=2)
    cached(["a tower", "a bridge"])
    cached(["a tower"])  # asked again: "a bridge" is now the oldest
    cached(["a river"])
    cached(["a tower", "a bridge"])
    assert asked == [["a tower", "a bridge"], ["a river"], ["a bridge"]]


def test_a_rules_batch_never_holds_more_documents_than_the_rules_remember():
    """Each rank of a batch revisits its documents in order: with more documents than the
    caches hold, every rank would parse every document again."""
    from fi_method.synthesis import rules_instantiator
    from fi_method.templating import rules_genericizer

    for cached in (
        rules_genericizer._filler_spans,
        rules_instantiator._filler_index,
        rules_instantiator._sentences,
    ):
        assert RULES_BATCH_DOCUMENTS <= cached.cache_info().maxsize


def test_documents_parsed_together_parse_as_one_at_a_time_and_are_remembered():
    """The rules parse a call's documents with spaCy's batched pipe: the parses must be the ones
    a call each gives, and later reads of a document must not parse it again."""
    from fi_method.templating import rules_genericizer

    texts = [row["text"] for row in wikipedia_articles(limit=3)]
    texts = [text[:3000] for text in texts]
    alone = [rules_genericizer._nlp()(text) for text in texts]
    rules_genericizer.parse_documents(texts)
    together = [rules_genericizer.parse_document(text) for text in texts]
    for one, other in zip(alone, together, strict=True):
        assert [(t.text, t.tag_, t.dep_, t.head.i, t.ent_type_) for t in one] == [
            (t.text, t.tag_, t.dep_, t.head.i, t.ent_type_) for t in other
        ]
    assert rules_genericizer.parse_document(texts[0]) is together[0]


def test_document_parses_are_forgotten_oldest_first_beyond_their_characters():
    from fi_method.roles import RecentlyUsed
    from fi_method.templating.rules_genericizer import _nlp, not_yet_parsed

    parses = RecentlyUsed(60, size=len)

    def add(text):
        parses.put(text, _nlp()(text))
        parses.forget_beyond_most()

    first, second, third = "Paris is in France.", "Rome is in Italy.", "Oslo is in Norway."
    for text in (first, second):
        add(text)
    assert parses.get(first) is not None  # now the most recently used
    assert not_yet_parsed([first, second, third, third], parses) == [third]
    add(third)
    add("Lima is in Peru.")
    assert parses.get(second) is None
    assert parses.get(first) is not None and parses.get(third) is not None
    # A document longer than the bound is still kept, alone, until the next one.
    long = "Bern is in Switzerland. " * 5
    add(long)
    assert parses.get(long) is not None and parses.get(first) is None


def test_markup_and_list_runs_never_fill_a_slot(embed):
    """Wikipedia text holds headings, list runs and file names that a parser reads as names:
    they are not values an instruction can be about."""
    chunk = (
        "== Art direction ==\n\nThe film won the award for art direction.\n\nSchindler's List\n\n"
        "Allan Starski\n\nEwa Braun\n\nFile:Margarita Philosophica.png\n\nThe award went to the "
        "designers Allan Starski and Ewa Braun, whose sets rebuilt the Krakow ghetto in 1993 on "
        "a field outside the city, with streets, courtyards and a wall copied from photographs."
    )
    output = parse_output(rules_instantiate("Who rebuilt <fi>a kind of ghetto</fi>?", chunk, embed))
    assert output is not None
    assert "\n" not in output.instruction and "File:" not in output.instruction
    assert "==" not in output.instruction


# Passages of English Wikipedia articles (the demo's documents), where the rules before these
# checks made pairs that make no sense.
KURDISH_PASSAGE = (
    "In Baku several newspapers are published in Russian, Kurdish (Dengi Kurd), Lezgian (Samur) "
    'and Talysh languages. Jewish society "Sokhnut" publishes the newspaper Aziz. Some local radio '
    "stations in Balakan and Khachmaz organize broadcasts in Avar and Tat."
)
ALGAE_PASSAGE = (
    "At this time, microscopic algae were discovered and reported by a different group of workers "
    "(e.g., O. F. Müller and Ehrenberg) studying the Infusoria (microscopic organisms). Unlike "
    "macroalgae, which were clearly viewed as plants, microalgae were frequently considered animals "
    "because they are often motile. Although used as a taxonomic category in some pre-Darwinian "
    "classifications, e.g., Linnaeus (1753), de Jussieu (1789), Horaninow (1843), Agassiz (1859), "
    'in further classifications, the "algae" are seen as an artificial, polyphyletic group.'
)
FOUNTAINHEAD_PASSAGE = (
    "After several delays, the film version of The Fountainhead was released in 1949. Although it "
    "used Rand's screenplay with minimal alterations, she \"disliked the movie from beginning to "
    'end", complaining about its editing, acting, and other elements. In the years following the '
    "publication of The Fountainhead, Rand received numerous letters from readers, some of whom it "
    "profoundly influenced."
)
ALBERTA_PASSAGE = (
    "Despite this, relatively few Albertans claim French as their mother tongue. Many of Alberta's "
    "French-speaking residents live in the central and northwestern regions of the province. As "
    "reported in the 2001 census, the Chinese represented nearly four percent of Alberta's "
    "population, and East Indians represented more than two percent."
)
ANDORRA_PASSAGE = (
    "The Muslim community is primarily made up of approximately a few North African immigrants. "
    "There is a small community of Hindus and Bahá'ís and roughly 100 Jews live in Andorra. (See "
    "History of the Jews in Andorra.) Children between the ages of 6 and 16 are required by law to "
    "have full-time education."
)
IRAN_PASSAGE = (
    "These religious sites attract large numbers of devotees from all over the world, particularly "
    "during the Hajj and Umrah seasons. Iran is the largest Shi'a country and Pakistan has the "
    "largest Ahmadiyya population. The Bahá'í Faith originated in Asia, in Iran (Persia), and "
    "spread from there to the Ottoman Empire, Central Asia, India, and Burma."
)
ALGERIA_PASSAGE = (
    "Algeria is the tenth-largest country in the world, and the largest in Africa and the Arab "
    "world. Algeria is bordered to the northeast by Tunisia, to the east by Libya, to the west by "
    "Morocco, to the southwest by Western Sahara, Mauritania, and Mali, to the southeast by Niger, "
    "and to the north by the Mediterranean Sea."
)
ALABAMA_PASSAGE = (
    "The European-American naming of the Alabama River and state originates from the Alabama "
    "people, a Muskogean-speaking tribe whose members lived just below the confluence of the Coosa "
    "and Tallapoosa rivers on the upper reaches of the river. In the Alabama language, the word for "
    "an Alabama person is Albaamo (or variously Albaama or Albàamo in different dialects; the plural "
    "form is Albaamaha)."
)
ALBANIA_PASSAGE = (
    "English, Italian and Greek are by far the most widely spoken foreign languages, which are "
    "increasing due to migration return, and new Greek and Italian communities in the country. La "
    "Francophonie states 320,000 French speakers can be found in Albania. Other spoken languages "
    "include Serbian, Romanian, German, Turkish and Aromanian."
)
GROUP = "<fi>a nationality, religion or political group</fi>"


@pytest.mark.parametrize(
    ("template", "chunk", "reason"),
    [
        # A WebQuestions query that never had a verb ("what language do chinese?").
        (f"what language do {GROUP}?", KURDISH_PASSAGE, 'no verb after "do"'),
        # The slot took the verb: "where did al qaeda attack?" read "qaeda attack" as one noun.
        ("where did al <fi>a kind of attack</fi>?", KURDISH_PASSAGE, 'no verb after "did"'),
        # "what capital of argentina?" never had one.
        ("what capital of <fi>a city or country</fi>?", ALGERIA_PASSAGE, "no finite verb"),
        ("Hi <fi>a person</fi>", FOUNTAINHEAD_PASSAGE, "greeting"),
        # "what language is spoken in greek?": the slot names what the question asks for.
        ("what language is spoken in <fi>a language</fi>?", ALBANIA_PASSAGE, "names one in its"),
        # "explain difference kanban scrum": two things in one slot.
        ("explain difference <fi>a specific topic or concept</fi>", ALGAE_PASSAGE, "compares one"),
        # A passage copied word for word is not the book the request asks to write.
        ("Write <fi>a book, film or other work</fi>", FOUNTAINHEAD_PASSAGE, "write or rewrite"),
        # "do ... speak" asks about a people; "French" here is their language.
        (f"what do {GROUP} speak?", ALBERTA_PASSAGE, "singular"),
        # Around a country are its neighbours: the passage names other countries, not borders.
        ("what countries are around <fi>a city or country</fi>?", IRAN_PASSAGE, "around"),
    ],
)
def test_a_template_the_passage_cannot_make_sense_of_gives_null(embed, template, chunk, reason):
    output = rules_instantiate(template, chunk, embed)
    assert parse_output(output) is None and reason in output, output


@pytest.mark.parametrize(
    ("template", "chunk", "instruction"),
    [
        (f"where do {GROUP} live?", ANDORRA_PASSAGE, "where do the Jews live?"),
        # The tribe, not "Tallapoosa rivers", which the embedding of a people's kind let in.
        (
            "where did <fi>a kind of tribe</fi> live?",
            ALABAMA_PASSAGE,
            "where did a Muskogean-speaking tribe live?",
        ),
        (
            "what countries are around <fi>a city or country</fi>?",
            ALGERIA_PASSAGE,
            "what countries are around Algeria?",
        ),
    ],
)
def test_a_plural_people_and_a_country_with_borders_are_kept(embed, template, chunk, instruction):
    parsed = parse_output(rules_instantiate(template, chunk, embed))
    assert parsed is not None and parsed.instruction == instruction


@pytest.mark.parametrize(
    ("value", "plural"),
    [
        ("Armenians", True),
        ("the Jews", True),
        ("Portuguese", True),
        ("the French", True),
        ("Kurdish", False),
        ("Albanian", False),
        ("French", False),
    ],
)
def test_a_people_is_plural_and_its_language_is_not(value, plural):
    assert reads_as_plural(value) is plural


@pytest.mark.parametrize(
    ("value", "many"),
    [
        # "where does <fi>a kind of team</fi> play?", "where <fi>a language</fi> is spoken?"
        ("NFL teams", True),
        ("Afroasiatic languages", True),
        ("the United States", False),
        ("Muslims", False),
        ("the Eiffel Tower", False),
    ],
)
def test_a_plural_common_noun_names_many_and_a_plural_name_one_thing(value, many):
    assert names_many(value) is many


def test_a_value_left_with_wiki_markup_is_no_filler():
    assert not usable_filler("= Africa")
