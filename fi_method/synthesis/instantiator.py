"""The instantiator role, stage C of FineInstructions: a template and a document become an
instruction (every `<fi>` slot filled, mostly from the document) and a grounded answer, or `null`
when the template does not fit the document. Here: the prompt and the parser every engine shares,
and the grounding checks every pair passes; the offline engine is
fi_method.synthesis.rules_instantiator."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from fi_method.llm_output import PromptStyle, first_json_object, string_field
from fi_method.llm_output import prompt_style_for as style_for
from fi_method.reasons import RejectReason
from fi_method.roles import OutputFormat, Request, Role, Rules, RulesAids
from fi_method.synthesis.excerpts import (
    EXCERPT_CLOSE,
    EXCERPT_ELLIPSIS,
    EXCERPT_OPEN,
    MIN_EXCERPT_RATIO,
    excerpt_ratio,
    expand_excerpts,
)
from fi_method.templating.templates import FI_CLOSE, FI_OPEN

RELEASED_INSTANTIATOR = "fineinstructions/template_instantiator"
# Part of every cache key: change it whenever the prompt changes, so no stale answer is reused.
PROMPT_VERSION = "1"
# Part of every cache key and of instantiated_pairs' code version: change it whenever the outputs
# of the rules in `rules_instantiator` (or of the helpers they use) change.
# tests/goldens/instantiator.json holds their outputs on real passages, and tests/test_goldens.py
# fails when they change while this does not.
RULES_VERSION = "rules-21"
# About 4k Llama-3 tokens: long documents are cut to the window around the matched chunk.
MAX_DOCUMENT_CHARS = 16_000


@dataclass(frozen=True)
class Instantiation:
    """An instantiated instruction and its answer as the model wrote them (excerpt markers
    not yet expanded)."""

    instruction: str
    answer: str


class GroundingError(ValueError):
    """A pair that is not grounded in its document, and why."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Prompt

_INSTRUCTED_SYSTEM = (
    "You fill in an instruction template from a document and answer it from that document. "
    f"Replace every {FI_OPEN}description{FI_CLOSE} slot with a specific value, taken from the "
    "document where possible; slots with the same description get the same value. Then answer the "
    "instruction by copying the relevant passages of the document: at least 80% of the answer must "
    f"be copied text. Copy a long passage as {EXCERPT_OPEN}its first words{EXCERPT_ELLIPSIS}its "
    f"last words{EXCERPT_CLOSE}. Reply with one JSON object only: "
    '{"instruction": "...", "answer": "..."}, or with null if the document cannot answer any '
    "instruction of this form."
)

_EXAMPLE_INPUT = {
    "instruction_template": "When was <fi>a bridge</fi> in <fi>a city</fi> opened?",
    "document": "The Tower Bridge is a bridge in London. Construction started in 1886 and took "
    "eight years. The bridge was opened on 30 June 1894 by the Prince of Wales.",
}
_EXAMPLE_OUTPUT = {
    "instruction": "When was the Tower Bridge in London opened?",
    "answer": f"{EXCERPT_OPEN}The bridge was opened{EXCERPT_ELLIPSIS}the Prince of "
    f"Wales.{EXCERPT_CLOSE} Construction started in 1886 and took eight years.",
}


def _input_json(template: str, document: str) -> str:
    return json.dumps({"instruction_template": template, "document": document}, ensure_ascii=False)


def build_messages(template: str, document: str, prompt_style: PromptStyle) -> list[dict]:
    """Chat messages asking a model to instantiate `template` from `document`. "bare" is what
    the released instantiator was trained on: one user message holding the JSON
    `{"instruction_template", "document"}`. "instructed" adds the task as a system message and one
    worked example, for general instruction-tuned models."""
    user = {"role": "user", "content": _input_json(template, document)}
    if prompt_style == "bare":
        return [user]
    if prompt_style != "instructed":
        raise ValueError(f"unknown prompt style {prompt_style!r}: use 'bare' or 'instructed'")
    return [
        {"role": "system", "content": _INSTRUCTED_SYSTEM},
        {
            "role": "user",
            "content": _input_json(
                _EXAMPLE_INPUT["instruction_template"], _EXAMPLE_INPUT["document"]
            ),
        },
        {"role": "assistant", "content": json.dumps(_EXAMPLE_OUTPUT, ensure_ascii=False)},
        user,
    ]


def prompt_style_for(model: str) -> PromptStyle:
    """ "bare" for the released instantiator (HF id or a path ending in its name), else
    "instructed"."""
    return style_for(model, RELEASED_INSTANTIATOR)


# Where a window may start or end, best first: a paragraph break, then a sentence end.
_WINDOW_BREAKS = ("\n\n", ".\n", ". ")


def document_window(document: str, chunk: str, max_chars: int = MAX_DOCUMENT_CHARS) -> str:
    """The document as the instantiator sees it: whole when it fits in `max_chars`, else the
    `max_chars` around the matched chunk (the paper finds the answer where the chunk matched),
    cut at paragraph or sentence breaks where there are some."""
    if len(document) <= max_chars:
        return document
    # A chunk is verbatim text of its document unless chunking re-joined sentences that had a
    # single line break between them: then its first line still is.
    at = document.find(chunk)
    if at < 0:
        at = document.find(chunk.split("\n", 1)[0][:200])
    centre = at + len(chunk) // 2 if at >= 0 else len(document) // 2
    start = max(0, min(centre - max_chars // 2, len(document) - max_chars))
    end = start + max_chars
    if start > 0:
        for separator in _WINDOW_BREAKS:
            cut = document.find(separator, start, start + max_chars // 4)
            if cut >= 0:
                start = cut + len(separator)
                break
    if end < len(document):
        for separator in _WINDOW_BREAKS:
            cut = document.rfind(separator, end - max_chars // 4, end)
            if cut >= 0:
                end = cut + (0 if separator == "\n\n" else 1)
                break
    return document[start:end].strip()


# ---------------------------------------------------------------------------------------------
# Output parser


_NULL = re.compile(r"\bnull\b", re.IGNORECASE)


def parse_output(text: str) -> Instantiation | None:
    """Read an instantiator output: `null`, alone or after some words, and no JSON object (the
    template does not fit: returns None), or the first JSON object, with string fields
    `instruction` and `answer`. Raises fi_method.llm_output.OutputParseError otherwise."""
    if "{" not in text and _NULL.search(text):
        return None
    found = first_json_object(text)
    return Instantiation(
        string_field(found, "instruction", "instantiated_instruction"),
        string_field(found, "answer", "response"),
    )


# ---------------------------------------------------------------------------------------------
# Grounding


def ground(
    instantiation: Instantiation, document: str, min_ratio: float = MIN_EXCERPT_RATIO
) -> tuple[str, float]:
    """The answer with its excerpt markers expanded against `document`, and its excerpt ratio.
    Raises GroundingError (EMPTY_INSTRUCTION, UNFILLED_SLOT, EMPTY_ANSWER, LOW_EXCERPT_RATIO) or
    fi_method.synthesis.excerpts.ExcerptError (EXCERPT_NOT_FOUND, EXCERPT_AMBIGUOUS,
    MALFORMED_EXCERPT), with a fi_method.reasons.RejectReason."""
    instruction = instantiation.instruction
    if not instruction:
        raise GroundingError(RejectReason.EMPTY_INSTRUCTION, "the instruction is empty")
    if FI_OPEN in instruction or FI_CLOSE in instruction:
        raise GroundingError(
            RejectReason.UNFILLED_SLOT, f"a slot is left in: {instruction[:200]!r}"
        )
    answer = expand_excerpts(instantiation.answer, document).strip()
    if not answer:
        raise GroundingError(RejectReason.EMPTY_ANSWER, "the answer is empty")
    ratio = excerpt_ratio(answer, document)
    if ratio < min_ratio:
        raise GroundingError(
            RejectReason.LOW_EXCERPT_RATIO,
            f"excerpt ratio {ratio:.2f} is below the minimum {min_ratio:.2f}",
        )
    return answer, ratio


# ---------------------------------------------------------------------------------------------
# The role

OUTPUT_SCHEMA = {
    "anyOf": [
        {"type": "null"},
        {
            "type": "object",
            "properties": {
                "instruction": {"type": "string", "minLength": 1},
                "answer": {"type": "string", "minLength": 1},
            },
            "required": ["instruction", "answer"],
            "additionalProperties": False,
        },
    ]
}


def _request(item: dict, model: str) -> Request:
    # A model reads the document around the matched chunk, up to MAX_DOCUMENT_CHARS.
    document = document_window(item["document"], item["chunk"])
    return Request(messages=build_messages(item["template"], document, prompt_style_for(model)))


def _rules_answer(items: list[dict], aids: RulesAids) -> list[str]:
    # Imported on first use: the rules load spaCy, which commands that only read settings
    # (`fi sql`) should not wait for.
    from fi_method.synthesis.rules_instantiator import rules_instantiate_all

    # The rules read what a model reads, the document around the matched chunk, as a span of
    # the whole document, so that a document is parsed once for all its chunks.
    return rules_instantiate_all(
        [
            (
                item["template"],
                item["chunk"],
                item["anchor"],
                item["document"],
                _window_span(item["document"], item["chunk"]),
            )
            for item in items
        ],
        aids.embed,
    )


def _window_span(document: str, chunk: str) -> tuple[int, int]:
    window = document_window(document, chunk)
    start = document.find(window)
    return (start, start + len(window)) if start >= 0 else (0, len(document))


ROLE = Role(
    name="instantiator",
    prompt_version=PROMPT_VERSION,
    default_model=RELEASED_INSTANTIATOR,
    max_new_tokens=1024,
    request=_request,
    parse=parse_output,
    output_format=lambda _item: OutputFormat(json_schema=OUTPUT_SCHEMA),
    # The released instantiator's card does not spell out its JSON keys (the parser reads either
    # spelling): it decodes freely.
    unconstrained_models=(RELEASED_INSTANTIATOR,),
    rules=Rules(
        version=RULES_VERSION,
        # The rules answer from where the template matched the chunk, reading on into the
        # document around it (the window a model reads).
        reads=("template", "chunk", "anchor", "document"),
        implementation=_rules_answer,
        params=lambda aids: {"embedder": aids.embedder_model},
    ),
    settings=("min_excerpt_ratio",),
)
