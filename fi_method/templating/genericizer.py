"""The genericizer role, stage A of FineInstructions: a real user query becomes an instruction
template (specific spans replaced by `<fi>description</fi>`) plus a compatible document
description. Here: the prompt and the output parser shared by the LLM engines; the offline
`rules` engine is in fi_method.templating.rules_genericizer."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fi_method.llm_output import PromptStyle, first_json_object, string_field
from fi_method.llm_output import prompt_style_for as style_for
from fi_method.roles import OutputFormat, Request, Role, Rules, RulesAids
from fi_method.templating.templates import FI_CLOSE, FI_OPEN

RELEASED_TEMPLATIZER = "fineinstructions/query_templatizer"
# Part of every cache key: change it whenever the prompt changes, so no stale answer is reused.
PROMPT_VERSION = "1"
# The rules genericizer's (fi_method.templating.rules_genericizer) part of every cache key and of
# instruction_templates' code version; tests/goldens/genericizer.json holds its outputs on real
# queries, and tests/test_goldens.py fails when they change while this does not.
RULES_VERSION = "rules-9"


@dataclass(frozen=True)
class GenericizedQuery:
    """One genericizer output: the `<fi>` template and its compatible document description."""

    template: str
    compatible_document_description: str


# ---------------------------------------------------------------------------------------------
# Prompt

_INSTRUCTED_SYSTEM = (
    "Turn the user's query into a reusable template: replace each specific name, number or "
    f"scenario with {FI_OPEN}a short description of what fits there{FI_CLOSE}, keeping the other "
    "words. Where the same thing repeats, repeat its description. Also describe in one sentence "
    "the documents that could fill in and answer the template. Reply with one JSON object only: "
    '{"template": "...", "compatible_document_description": "..."}'
)

# Few-shot turns teach a small model the output format far better than instructions alone; the
# queries are unlike the test queries so that copying an example is visible as a failure.
_INSTRUCTED_EXAMPLES = (
    (
        "How do I grow tomatoes on a balcony in Chicago?",
        {
            "template": "How do I grow <fi>a vegetable or fruit</fi> on <fi>a small outdoor "
            "space</fi> in <fi>a city</fi>?",
            "compatible_document_description": "A gardening guide to growing a vegetable or fruit "
            "in a small outdoor space in a city's climate.",
        },
    ),
    (
        "What is the difference between Python and Java for building websites?",
        {
            "template": "What is the difference between <fi>a programming language</fi> and "
            "<fi>another programming language</fi> for <fi>a software task</fi>?",
            "compatible_document_description": "A tutorial comparing two programming languages "
            "for a software task.",
        },
    ),
)


def build_messages(query: str, prompt_style: PromptStyle) -> list[dict[str, str]]:
    """Chat messages asking a model to genericize `query`. "bare" is exactly what the released
    templatizer was trained on: one user message holding the query. "instructed" is for general
    instruction-tuned models: a short system message with the task and the JSON format, two
    worked examples as earlier turns, then the query."""
    if prompt_style == "bare":
        return [{"role": "user", "content": query}]
    if prompt_style != "instructed":
        raise ValueError(f"unknown prompt style {prompt_style!r}: use 'bare' or 'instructed'")
    messages = [{"role": "system", "content": _INSTRUCTED_SYSTEM}]
    for example_query, answer in _INSTRUCTED_EXAMPLES:
        messages.append({"role": "user", "content": example_query})
        messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
    messages.append({"role": "user", "content": query})
    return messages


def prompt_style_for(model: str) -> PromptStyle:
    """The prompt style a model expects: "bare" for the released templatizer (an HF id or a
    local path whose last component is `query_templatizer`, any case), else "instructed"."""
    return style_for(model, RELEASED_TEMPLATIZER)


# ---------------------------------------------------------------------------------------------
# Output parser

_OUTPUT_FIELDS = ("template", "compatible_document_description")


def parse_output(text: str) -> GenericizedQuery:
    """Read a genericizer model's output: the first JSON object in the text, which must hold the
    string fields `template` and `compatible_document_description` (whitespace stripped).
    Raises fi_method.llm_output.OutputParseError with a `reason` otherwise; the template itself
    is not validated."""
    found = first_json_object(text)
    return GenericizedQuery(*(string_field(found, name) for name in _OUTPUT_FIELDS))


# ---------------------------------------------------------------------------------------------
# The role

# Room a template has beyond its query: each slot's description may be longer than the span it
# replaces. The bound is rounded up to a power of two so that few grammars are compiled.
TEMPLATE_ROOM_CHARS = 200
MIN_DESCRIPTION_CHARS = 10
MAX_DESCRIPTION_CHARS = 400


def max_template_chars(query: str) -> int:
    """The longest template `query` can have: the query with spans replaced by descriptions."""
    return 1 << (len(query) + TEMPLATE_ROOM_CHARS - 1).bit_length()


# The genericizer's output restates its query. A token covers at least 2 characters of ~95 % of
# real long chat prompts (ShareGPT openings of 2,000-4,000 characters with SmolLM2's tokenizer:
# median 4.1, 5th percentile 2.45, least 1.26: CJK and code), and the description and the JSON
# around them take ~100 tokens more.
QUERY_CHARS_PER_TOKEN = 2
DESCRIPTION_AND_JSON_TOKENS = 96
MAX_NEW_TOKENS = 256


def output_budget(item: dict, base: int) -> int:
    """The output budget for genericizing `item["query"]`: the engine's `base` (the role's
    MAX_NEW_TOKENS, or what FI_MAX_NEW_TOKENS sets), plus, for a query longer than the role's
    budget holds, the tokens its restatement needs beyond that, rounded up to a power of two so
    that a step makes few groups of one budget each."""
    needed = len(item["query"]) // QUERY_CHARS_PER_TOKEN + DESCRIPTION_AND_JSON_TOKENS
    beyond = needed - MAX_NEW_TOKENS
    return base if beyond <= 0 else 1 << (base + beyond - 1).bit_length()


def output_schema(query: str) -> dict:
    """The JSON schema of the genericizer's output for `query`. The lengths are bounded, so a
    model that runs on inside a string is made to close it and the JSON within its budget.
    Slots are not forced by a pattern: a grammar that cannot end a template without a slot keeps
    a model that will not write one inside the string until its budget is spent (measured with
    SmolLM2), and xgrammar ignores maxLength beside a pattern. Validation rejects a template
    without slots (`no_tags`)."""
    return {
        "type": "object",
        "properties": {
            "template": {"type": "string", "minLength": 1, "maxLength": max_template_chars(query)},
            "compatible_document_description": {
                "type": "string",
                "minLength": MIN_DESCRIPTION_CHARS,
                "maxLength": MAX_DESCRIPTION_CHARS,
            },
        },
        "required": list(_OUTPUT_FIELDS),
        "additionalProperties": False,
    }


def _request(item: dict, model: str) -> Request:
    return Request(messages=build_messages(item["query"], prompt_style_for(model)))


def _rules_answer(items: list[dict], _aids: RulesAids) -> list[str]:
    # Imported here: the rules genericizer builds on this module's GenericizedQuery.
    from fi_method.templating.rules_genericizer import rules_output

    return [rules_output(item["query"]) for item in items]


ROLE = Role(
    name="genericizer",
    prompt_version=PROMPT_VERSION,
    default_model=RELEASED_TEMPLATIZER,
    max_new_tokens=MAX_NEW_TOKENS,
    request=_request,
    parse=parse_output,
    output_format=lambda item: OutputFormat(json_schema=output_schema(item["query"])),
    rules=Rules(version=RULES_VERSION, reads=("query",), implementation=_rules_answer),
    # The released templatizer's card does not spell out its output's keys or their order:
    # held to this schema (exactly two keys, no others) it could be bent off what it was trained
    # to write, so it decodes freely and the parser reads the first JSON object in its text.
    unconstrained_models=(RELEASED_TEMPLATIZER,),
    output_budget=output_budget,
)
