"""Why a matched pair, or a model output about one, was dropped: the `reason` column of the rejects
of instantiated_pairs and judged_pairs, as one enumeration that the parsers raising a reason, the
collectors recording it and the funnel counting it all use. The parse failures are shared with
every role that writes JSON (instruction_templates' rejects hold them too).

Each reason is lost at exactly one step of the funnel (LOST_BEFORE), so the funnel's counts add
up to the rows of the rejects tables. Ingestion's reasons, about input rows rather than pairs,
stay with ingestion (fi_method.ingest)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class RejectReason(StrEnum):
    """A reject reason of stages C and D. A StrEnum: each member is its own string, so the
    Parquet rejects tables and queries over them (`fi sql`) hold the plain words."""

    # The template's query shard was removed after matching: matched_pairs is stale, the pair is
    # not tried.
    TEMPLATE_REMOVED = "template_removed"

    # The role's prompt and output budget do not fit the model's context window (measured with
    # the model's tokenizer, or said by the server): not asked, its neighbours are.
    PROMPT_TOO_LONG = "prompt_too_long"
    # The instantiator answered `null`: the template does not fit the passage.
    TEMPLATE_DOES_NOT_FIT = "template_does_not_fit"
    # The output holds no JSON object (and no `null`).
    NO_JSON = "no_json"
    # The output opens a JSON object that never decodes (cut off, or broken).
    INVALID_JSON = "invalid_json"
    # The JSON object lacks a field the role writes.
    MISSING_FIELD = "missing_field"
    # A field the role writes as a string holds another JSON type.
    NOT_A_STRING = "not_a_string"
    # The parser rejected the output with an error that names no reason of its own.
    INVALID_OUTPUT = "invalid_output"

    # The instantiated instruction is empty.
    EMPTY_INSTRUCTION = "empty_instruction"
    # The instruction still holds a `<fi>` slot of its template.
    UNFILLED_SLOT = "unfilled_slot"
    # The answer is empty once its excerpts are expanded.
    EMPTY_ANSWER = "empty_answer"
    # Less of the answer than FI_MIN_EXCERPT_RATIO is copied from the document.
    LOW_EXCERPT_RATIO = "low_excerpt_ratio"
    # An `<excerpt>` marker's words are not in the document.
    EXCERPT_NOT_FOUND = "excerpt_not_found"
    # An `<excerpt>` marker's first and last words bound more than one span of the document.
    EXCERPT_AMBIGUOUS = "excerpt_ambiguous"
    # An `<excerpt>` marker lacks its `<...>`, its head or tail, or its closing tag.
    MALFORMED_EXCERPT = "malformed_excerpt"
    # The same document, template, instruction and answer as an earlier pair of the shard.
    DUPLICATE_PAIR = "duplicate_pair"
    # The template already made FI_MAX_TEMPLATE_USES pairs of the shard.
    TEMPLATE_OVERUSED = "template_overused"

    # The judge's prompt (the pair, its document and the rubric) does not fit the judge model's
    # context window: the pair is grounded but not judged.
    JUDGE_PROMPT_TOO_LONG = "judge_prompt_too_long"
    # The judge's output holds no `<score>`.
    NO_SCORE = "no_score"
    # The judge's score is not on the rubric's scale, 1..5.
    SCORE_OUT_OF_RANGE = "score_out_of_range"

    # The judge scored the pair below FI_MIN_JUDGE_SCORE: judged, not kept.
    LOW_JUDGE_SCORE = "low_judge_score"
    # Another pair of the document asks the same (case, accents, punctuation, tense, auxiliaries
    # and articles aside) and the judge scored it as high or higher: judged, not kept.
    DUPLICATE_INSTRUCTION = "duplicate_instruction"


# Where each reason leaves the funnel matched -> tried -> instantiated -> grounded -> judged ->
# kept: the first count its pairs do not reach.
NOT_TRIED = frozenset({RejectReason.TEMPLATE_REMOVED})
# Not asked, parse failures and `null`: the output never became an (instruction, answer).
NOT_INSTANTIATED = frozenset(
    {
        RejectReason.PROMPT_TOO_LONG,
        RejectReason.TEMPLATE_DOES_NOT_FIT,
        RejectReason.NO_JSON,
        RejectReason.INVALID_JSON,
        RejectReason.MISSING_FIELD,
        RejectReason.NOT_A_STRING,
        RejectReason.INVALID_OUTPUT,
    }
)
# Instantiated, but not grounded in the document, or not a new pair the shard may keep.
NOT_GROUNDED = frozenset(
    {
        RejectReason.EMPTY_INSTRUCTION,
        RejectReason.UNFILLED_SLOT,
        RejectReason.EMPTY_ANSWER,
        RejectReason.LOW_EXCERPT_RATIO,
        RejectReason.EXCERPT_NOT_FOUND,
        RejectReason.EXCERPT_AMBIGUOUS,
        RejectReason.MALFORMED_EXCERPT,
        RejectReason.DUPLICATE_PAIR,
        RejectReason.TEMPLATE_OVERUSED,
    }
)
# The judge's output says nothing usable about the pair.
NOT_JUDGED = frozenset(
    {RejectReason.JUDGE_PROMPT_TOO_LONG, RejectReason.NO_SCORE, RejectReason.SCORE_OUT_OF_RANGE}
)
NOT_KEPT = frozenset({RejectReason.LOW_JUDGE_SCORE, RejectReason.DUPLICATE_INSTRUCTION})
LOST_BEFORE: dict[str, frozenset[RejectReason]] = {
    "tried": NOT_TRIED,
    "instantiated": NOT_INSTANTIATED,
    "grounded": NOT_GROUNDED,
    "judged": NOT_JUDGED,
    "kept": NOT_KEPT,
}
_STEP_OF = {reason: step for step, reasons in LOST_BEFORE.items() for reason in reasons}


def lost_before(reason: str) -> str:
    """The funnel count (a key of LOST_BEFORE) that a pair rejected for `reason` does not reach.
    Raises ValueError naming a reason that no stage writes, so that no reject goes uncounted."""
    try:
        member = RejectReason(reason)
    except ValueError:
        raise ValueError(
            f"unknown reject reason {reason!r}: declare it in fi_method.reasons.RejectReason"
        ) from None
    return _STEP_OF[member]


def losses(reasons: Iterable[str]) -> dict[str, int]:
    """How many of `reasons` (one per reject) leave the funnel before each of its counts."""
    counts = dict.fromkeys(LOST_BEFORE, 0)
    for reason in reasons:
        counts[lost_before(reason)] += 1
    return counts
