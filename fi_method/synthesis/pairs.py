"""From role outputs to table rows (stages C and D): every output is parsed and checked the same
way whichever engine produced it, and every pair dropped is kept with its reason."""

from __future__ import annotations

from fi_method.synthesis import judge
from fi_method.synthesis.instantiator import ground, parse_output
from fi_method.text import content_hash

# The instantiator's `null`: the template does not fit the document.
NULL_OUTPUT = "template_does_not_fit"
# Reasons an instantiator output never became a pair at all (before grounding).
NOT_INSTANTIATED = (
    NULL_OUTPUT,
    "no_json",
    "invalid_json",
    "missing_field",
    "not_a_string",
)
LOW_JUDGE_SCORE = "low_judge_score"


def collect_instantiations(
    requests: list[dict],
    outputs: list[str],
    documents: dict[str, str],
    min_excerpt_ratio: float,
    engine: str,
    model: str,
) -> tuple[list[dict], list[dict], int]:
    """Parse and ground each instantiator output. `requests` are matched pairs (`doc_id`,
    `chunk_id`, `template_id`, `query_id`, `similarity`, `source`); `documents` maps doc_id to
    text. Returns the kept pairs, the rejects and how many outputs were instantiated (parsed and
    not `null`), grounded or not. `pair_id` hashes the document, template, instruction and
    answer, so an unchanged pair keeps its id across reruns; a pair equal to an earlier one of
    the partition is rejected as `duplicate_pair`."""
    kept: list[dict] = []
    rejects: list[dict] = []
    instantiated = 0
    seen: set[str] = set()
    for request, text in zip(requests, outputs, strict=True):
        origin = {
            "source": request["source"],
            "line": None,
            "item_id": f"{request['doc_id']}:{request['template_id']}",
        }
        try:
            found = parse_output(text)
            if found is None:
                rejects.append({**origin, "reason": NULL_OUTPUT, "detail": "the output is null"})
                continue
            instantiated += 1
            answer, ratio = ground(found, documents[request["doc_id"]], min_excerpt_ratio)
        except ValueError as error:
            reason = getattr(error, "reason", "invalid_output")
            rejects.append({**origin, "reason": reason, "detail": str(error)[:500]})
            continue
        pair_id = content_hash(request["doc_id"], request["template_id"], found.instruction, answer)
        if pair_id in seen:
            rejects.append({**origin, "reason": "duplicate_pair", "detail": f"same as {pair_id}"})
            continue
        seen.add(pair_id)
        kept.append(
            {
                "pair_id": pair_id,
                "doc_id": request["doc_id"],
                "chunk_id": request["chunk_id"],
                "template_id": request["template_id"],
                "query_id": request["query_id"],
                "similarity": request["similarity"],
                "instruction": found.instruction,
                "answer": answer,
                "excerpt_ratio": round(ratio, 4),
                "engine": engine,
                "model": model,
            }
        )
    return kept, rejects, instantiated


def collect_judgements(
    pairs: list[dict], outputs: list[str], min_score: int, engine: str, model: str
) -> tuple[list[dict], list[dict]]:
    """Parse each judge output. Every judged pair is a row (`pair_id`, `score`, `feedback`,
    `kept` = score >= min_score); a pair the judge's output says nothing usable about, or one
    below `min_score`, is also in the rejects with its reason."""
    rows: list[dict] = []
    rejects: list[dict] = []
    for pair, text in zip(pairs, outputs, strict=True):
        origin = {"source": pair.get("source"), "line": None, "item_id": pair["pair_id"]}
        try:
            found = judge.parse_output(text)
        except ValueError as error:
            rejects.append({**origin, "reason": error.reason, "detail": str(error)[:500]})
            continue
        kept = found.score >= min_score
        if not kept:
            rejects.append(
                {
                    **origin,
                    "reason": LOW_JUDGE_SCORE,
                    "detail": f"score {found.score} < {min_score}: {found.feedback[:400]}",
                }
            )
        rows.append(
            {
                "pair_id": pair["pair_id"],
                "score": found.score,
                "feedback": found.feedback,
                "kept": kept,
                "engine": engine,
                "model": model,
            }
        )
    return rows, rejects


FUNNEL_STAGES = ("matched", "instantiated", "grounded", "judged", "kept")


def funnel(counts: dict[str, int]) -> list[dict]:
    """The funnel rows: each stage's count, its share of the matched pairs and of the stage
    before it."""
    rows = []
    matched = counts.get("matched", 0)
    previous = matched
    for stage in FUNNEL_STAGES:
        count = counts.get(stage, 0)
        rows.append(
            {
                "stage": stage,
                "pairs": count,
                "of_matched": f"{count / matched:.1%}" if matched else "-",
                "of_previous": f"{count / previous:.1%}" if previous else "-",
            }
        )
        previous = count
    return rows
