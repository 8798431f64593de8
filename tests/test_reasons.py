"""Reject reasons are one enumeration: each leaves the funnel at exactly one step, the funnel
counts a rejects table holding every reason once each, the collectors' own counts agree with the
declared steps, and no module spells a reason as a string of its own."""

import json
import re
from pathlib import Path

import polars as pl
import pytest

from fi_method.reasons import LOST_BEFORE, NOT_TRIED, RejectReason, lost_before
from fi_method.synthesis.pairs import (
    FUNNEL_STAGES,
    collect_instantiations,
    collect_judgements,
    funnel_counts,
)
from fi_resources.storage import rejects_frame

REPO = Path(__file__).resolve().parents[1]
# Where the stages live: a reason quoted anywhere here is a copy that can drift from the enum.
SOURCE_ROOTS = ("fi_method", "fi_assets")
ENUM_MODULE = REPO / "fi_method" / "reasons.py"


def test_every_reason_leaves_the_funnel_at_exactly_one_step():
    for reason in RejectReason:
        steps = [step for step, reasons in LOST_BEFORE.items() if reason in reasons]
        assert len(steps) == 1, f"{reason.name} is lost at {steps or 'no step'}"
        assert lost_before(reason) == steps[0]
    assert set().union(*LOST_BEFORE.values()) == set(RejectReason)


def test_the_steps_are_the_funnel_s_counts_after_matched():
    assert list(LOST_BEFORE) == ["tried", *FUNNEL_STAGES[1:]]


def test_a_rejects_table_holding_every_reason_once_counts_each_once(tmp_path):
    path = tmp_path / "rejects.parquet"
    rejects_frame(
        [
            {"stage": "instantiated_pairs", "reason": reason, "detail": "-"}
            for reason in RejectReason
        ]
    ).write_parquet(path)
    reasons = pl.read_parquet(path)["reason"].to_list()
    assert reasons == [str(reason) for reason in RejectReason]

    counts = funnel_counts(matched=40, grounded=30, reasons=reasons)

    # 9 grounding, duplicate and overuse rejects; 7 prompts too long, nulls and parse failures;
    # a prompt too long to judge and 2 unreadable judgements; a low score and a question its
    # document already asks; the removed template is never tried.
    assert counts == {
        "matched": 40,
        "tried": 46,
        "instantiated": 39,
        "grounded": 30,
        "judged": 27,
        "kept": 25,
        "null": 1,
    }
    assert counts["tried"] - counts["kept"] == len(RejectReason) - len(NOT_TRIED)


def test_an_undeclared_reason_is_refused_by_name():
    with pytest.raises(ValueError, match="'answer_too_long'"):
        funnel_counts(matched=2, grounded=1, reasons=["template_does_not_fit", "answer_too_long"])


DOCUMENT = (
    "The Tower Bridge is a bridge in London. Construction started in 1886 and took eight years. "
    "The bridge was opened on 30 June 1894 by the Prince of Wales. It crosses the River Thames "
    "close to the Tower of London."
)
FERRY = (
    "The ferry was opened in 1894 for the workers. Years later, the ferry was opened again to "
    "tourists in 1910."
)
INSTRUCTION = "When was the Tower Bridge in London opened?"
ANSWER = "<excerpt>The bridge was opened<...>the Prince of Wales.</excerpt>"


def pair_output(instruction=INSTRUCTION, answer=ANSWER) -> str:
    return json.dumps({"instruction": instruction, "answer": answer})


# An instantiator output of each kind a model writes, and the reason it is rejected for.
OUTPUTS = [
    ("t1", "d1", pair_output(), None),
    ("t2", "d1", pair_output(), None),
    ("t3", "d1", pair_output(), None),
    ("t4", "d1", pair_output(), None),
    ("t5", "d1", "null", RejectReason.TEMPLATE_DOES_NOT_FIT),
    ("t6", "d1", "I cannot fill this template from the passage.", RejectReason.NO_JSON),
    ("t7", "d1", pair_output()[:60], RejectReason.INVALID_JSON),
    ("t8", "d1", json.dumps({"instruction": INSTRUCTION}), RejectReason.MISSING_FIELD),
    ("t9", "d1", pair_output(answer=1894), RejectReason.NOT_A_STRING),
    ("t10", "d1", pair_output(instruction=" "), RejectReason.EMPTY_INSTRUCTION),
    (
        "t11",
        "d1",
        pair_output("When was <fi>a bridge</fi> in London opened?"),
        RejectReason.UNFILLED_SLOT,
    ),
    ("t12", "d1", pair_output(answer="  "), RejectReason.EMPTY_ANSWER),
    (
        "t13",
        "d1",
        pair_output(answer="It opened long ago, I believe, after years of work by many builders."),
        RejectReason.LOW_EXCERPT_RATIO,
    ),
    (
        "t14",
        "d1",
        pair_output(answer="<excerpt>The bridge was closed<...>the Prince of Wales.</excerpt>"),
        RejectReason.EXCERPT_NOT_FOUND,
    ),
    (
        "t15",
        "d2",
        pair_output("When did the ferry open?", "<excerpt>ferry was opened<...>in 1910.</excerpt>"),
        RejectReason.EXCERPT_AMBIGUOUS,
    ),
    (
        "t16",
        "d1",
        pair_output(answer="<excerpt>The bridge was opened on 30 June 1894"),
        RejectReason.MALFORMED_EXCERPT,
    ),
    ("t1", "d1", pair_output(), RejectReason.DUPLICATE_PAIR),
]
# A judge output for each of the four grounded pairs, and the reason it is rejected for.
VERDICTS = [
    ("<feedback>Copied from the passage, and answers it.</feedback><score>5</score>", None),
    ("<feedback>Too thin to help.</feedback><score>2</score>", RejectReason.LOW_JUDGE_SCORE),
    ("The answer is fine. Score: 4", RejectReason.NO_SCORE),
    ("<feedback>Great!</feedback><score>7</score>", RejectReason.SCORE_OUT_OF_RANGE),
]


def test_the_collectors_counts_agree_with_the_steps_their_reasons_are_declared_at():
    requests = [
        {
            "doc_id": doc_id,
            "chunk_id": f"c{index}",
            "template_id": template_id,
            "query_id": f"q-{template_id}",
            "similarity": 0.5,
            "source": "unit",
        }
        for index, (template_id, doc_id, _, _) in enumerate(OUTPUTS)
    ]
    kept, rejects, instantiated = collect_instantiations(
        requests,
        [output for _, _, output, _ in OUTPUTS],
        {"d1": DOCUMENT, "d2": FERRY},
        0.8,
        "rules",
        "written",
    )
    judged, judge_rejects = collect_judgements(
        kept, [text for text, _ in VERDICTS], 4, "rules", "written"
    )
    reasons = [r["reason"] for r in rejects + judge_rejects]
    expected = [reason for *_, reason in OUTPUTS + VERDICTS if reason is not None]
    assert reasons == expected

    assert funnel_counts(len(requests), len(kept), reasons) == {
        "matched": len(requests),
        "tried": len(requests),
        "instantiated": instantiated,
        "grounded": len(kept),
        "judged": len(judged),
        "kept": sum(row["kept"] for row in judged),
        "null": 1,
    }
    assert (instantiated, len(kept), len(judged)) == (12, 4, 2)


def spelled_reasons(source: str) -> list[str]:
    """Each reject reason that `source` writes as a string literal of its own."""
    values = "|".join(re.escape(reason) for reason in sorted(RejectReason, key=len, reverse=True))
    return [match.group(0) for match in re.finditer(rf"([\"'])({values})\1", source)]


def test_a_reason_copied_as_a_string_is_found():
    copied = 'rejects.append({**origin, "reason": "duplicate_pair", "detail": detail})'
    assert spelled_reasons(copied) == ['"duplicate_pair"']
    assert spelled_reasons("raise GroundingError('unfilled_slot', message)") == ["'unfilled_slot'"]
    named = 'rejects.append({**origin, "reason": RejectReason.DUPLICATE_PAIR, "detail": "x"})'
    assert spelled_reasons(named) == []
    assert spelled_reasons('reason = "duplicate_pairs"; docs = "`no_json` or null"') == []


def test_no_module_spells_a_reason_outside_the_enumeration():
    copies = [
        f"{path.relative_to(REPO)}: {literal}"
        for root in SOURCE_ROOTS
        for path in sorted((REPO / root).rglob("*.py"))
        if path != ENUM_MODULE
        for literal in spelled_reasons(path.read_text(encoding="utf-8"))
    ]
    assert not copies, (
        "reject reasons written as strings; use fi_method.reasons.RejectReason:\n"
        + "\n".join(copies)
    )
