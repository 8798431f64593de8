"""From role outputs to table rows (stages C and D): every output is parsed and checked the same
way whichever engine produced it, and every pair dropped is kept with its reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from fi_method.llm_output import OutputParseError, Refused, answered_text
from fi_method.reasons import RejectReason, losses
from fi_method.synthesis import judge
from fi_method.synthesis.excerpts import ExcerptError
from fi_method.synthesis.instantiator import GroundingError, ground, parse_output
from fi_method.synthesis.quality import TEMPLATE_SHARE_SLACK
from fi_method.text import content_hash, fold_for_matching, word_keys

# No template may make more pairs of a shard than this: with every template at most this many
# times, none holds more than TEMPLATE_SHARE_SLACK times a uniform share of the shard's distinct
# templates, which is what the dominant-template check asks.
MAX_TEMPLATE_USES = TEMPLATE_SHARE_SLACK
# What decides instantiated_pairs' rows from the instantiator's outputs (its code version):
# collect_instantiations and instantiate_by_rank, with the parser and `ground` they use, and the
# batches of documents they work in (which decide the order in which templates reach their cap).
# Change it whenever those rows change; tests/goldens/pairs.json holds them for real passages,
# and tests/test_goldens.py fails when they change while this does not.
PAIRS_VERSION = "2"
# The same for judged_pairs' rows from the judge's outputs: collect_judgements and the parser,
# and what the judge is given (2: each pair's template beside its instruction and answer; 4: a
# question asks the same as another whatever its tense, auxiliaries and articles).
JUDGEMENTS_VERSION = "4"
# Words that do not change what a question asks: "who won Nobel Prize?" and "who has won Nobel
# Prize?", "what language do the Albanians speak?" and "what language did Albanians speak?".
_NOT_ASKING = frozenset(
    word_keys(["do", "does", "did", "has", "have", "had", "is", "are", "was", "were", "be"])
    + ["the", "a", "an"]
)


def collect_instantiations(
    requests: list[dict],
    outputs: list[str | Refused],
    documents: dict[str, str],
    min_excerpt_ratio: float,
    engine: str,
    model: str,
    seen: set[str] | None = None,
) -> tuple[list[dict], list[dict], int]:
    """Parse and ground each instantiator output. `requests` are matched pairs (`doc_id`,
    `chunk_id`, `template_id`, `query_id`, `similarity`, `source`); `documents` maps doc_id to
    text. Returns the kept pairs, the rejects and how many outputs were instantiated (parsed and
    not `null`), grounded or not. `pair_id` hashes the document, template, instruction and
    answer, so an unchanged pair keeps its id across reruns; a pair equal to an earlier one of
    the partition (those in `seen`, which grows) is rejected as DUPLICATE_PAIR. Each reject's
    reason is a fi_method.reasons.RejectReason."""
    kept: list[dict] = []
    rejects: list[dict] = []
    instantiated = 0
    seen = set() if seen is None else seen
    for request, output in zip(requests, outputs, strict=True):
        origin = {
            "source": request["source"],
            "line": None,
            "item_id": f"{request['doc_id']}:{request['template_id']}",
        }
        try:
            text = answered_text(output, RejectReason.PROMPT_TOO_LONG)
            found = parse_output(text)
        except ValueError as error:
            reason = getattr(error, "reason", RejectReason.INVALID_OUTPUT)
            rejects.append({**origin, "reason": reason, "detail": str(error)[:500]})
            continue
        if found is None:
            # A `null` may come with the reason the template does not fit.
            said = text.strip()
            detail = said[:500] if said.lower() != "null" else "the output is null"
            rejects.append(
                {**origin, "reason": RejectReason.TEMPLATE_DOES_NOT_FIT, "detail": detail}
            )
            continue
        instantiated += 1
        try:
            answer, ratio = ground(found, documents[request["doc_id"]], min_excerpt_ratio)
        except (GroundingError, ExcerptError) as error:
            rejects.append({**origin, "reason": error.reason, "detail": str(error)[:500]})
            continue
        pair_id = content_hash(request["doc_id"], request["template_id"], found.instruction, answer)
        if pair_id in seen:
            rejects.append(
                {**origin, "reason": RejectReason.DUPLICATE_PAIR, "detail": f"same as {pair_id}"}
            )
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


def instantiate_by_rank(
    requests: list[dict],
    instantiate: Callable[[list[dict]], list[str | Refused]],
    documents: dict[str, str],
    min_excerpt_ratio: float,
    engine: str,
    model: str,
    max_template_uses: int = MAX_TEMPLATE_USES,
    uses: Counter[str] | None = None,
    seen: set[str] | None = None,
) -> tuple[list[dict], list[dict], int, int]:
    """Instantiate matched pairs rank by rank: every passage vector (`chunk_id`, `vector_index`)
    tries its template of rank 0, then, while it has no pair, its alternates in rank order, so a
    passage gets at most one pair per vector. A template makes at most `max_template_uses` pairs
    of the shard: a vector whose template is used up tries its next one, and a pair past the cap
    is rejected as TEMPLATE_OVERUSED (in the order of `requests`). `instantiate` maps a batch of
    requests to outputs (one call per round). A shard instantiated a batch of documents at a
    time passes every batch the same `uses` (pairs made per template) and `seen` (pair ids made),
    which grow: the cap and duplicates hold across the shard, earlier batches first. Returns the
    kept pairs, the rejects, how many outputs were instantiated and how many requests were
    tried."""
    kept: list[dict] = []
    rejects: list[dict] = []
    instantiated = tried = 0
    seen = set() if seen is None else seen
    filled: set[tuple[str, int]] = set()
    uses = Counter() if uses is None else uses
    for rank in sorted({request["rank"] for request in requests}):
        batch = [
            request
            for request in requests
            if request["rank"] == rank
            and (request["chunk_id"], request["vector_index"]) not in filled
            and uses[request["template_id"]] < max_template_uses
        ]
        if not batch:
            continue
        tried += len(batch)
        made, dropped, count = collect_instantiations(
            batch, instantiate(batch), documents, min_excerpt_ratio, engine, model, seen
        )
        instantiated += count
        rejects += dropped
        request_of = {(r["chunk_id"], r["template_id"]): r for r in batch}
        for pair in made:
            request = request_of[pair["chunk_id"], pair["template_id"]]
            if uses[pair["template_id"]] >= max_template_uses:
                rejects.append(
                    {
                        "source": request["source"],
                        "line": None,
                        "item_id": f"{pair['doc_id']}:{pair['template_id']}",
                        "reason": RejectReason.TEMPLATE_OVERUSED,
                        "detail": f"its template already made {max_template_uses} pairs of the "
                        "shard (FI_MAX_TEMPLATE_USES)",
                    }
                )
                continue
            uses[pair["template_id"]] += 1
            filled.add((request["chunk_id"], request["vector_index"]))
            kept.append(pair)
    return kept, rejects, instantiated, tried


def collect_judgements(
    pairs: list[dict], outputs: list[str | Refused], min_score: int, engine: str, model: str
) -> tuple[list[dict], list[dict]]:
    """Parse each judge output. Every judged pair is a row (`pair_id`, `score`, `feedback`,
    `kept` = score >= min_score); a pair the judge's output says nothing usable about, or one
    below `min_score`, is also in the rejects with its reason."""
    rows: list[dict] = []
    rejects: list[dict] = []
    for pair, output in zip(pairs, outputs, strict=True):
        origin = {"source": pair.get("source"), "line": None, "item_id": pair["pair_id"]}
        try:
            found = judge.parse_output(answered_text(output, RejectReason.JUDGE_PROMPT_TOO_LONG))
        except OutputParseError as error:
            rejects.append({**origin, "reason": error.reason, "detail": str(error)[:500]})
            continue
        kept = found.score >= min_score
        if not kept:
            rejects.append(
                {
                    **origin,
                    "reason": RejectReason.LOW_JUDGE_SCORE,
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


def one_pair_per_question(
    pairs: list[dict], rows: list[dict], rejects: list[dict]
) -> tuple[list[dict], list[dict]]:
    """A document keeps one pair per question. Of the kept `rows` (collect_judgements') whose
    pairs (`doc_id`, `instruction`) ask the same, case, accents, punctuation, tense, auxiliaries
    and articles aside (templates that differ in a word, or one template on two chunks,
    instantiate alike; see asks_the_same), the best-scored
    stays kept (then the lowest `pair_id`); the others are no longer kept and are added to
    `rejects` as DUPLICATE_INSTRUCTION. Returns the rows and the rejects."""
    pair_of = {pair["pair_id"]: pair for pair in pairs}
    best: dict[tuple[str, str], dict] = {}
    for row in sorted(rows, key=lambda row: (-row["score"], row["pair_id"])):
        if not row["kept"]:
            continue
        pair = pair_of[row["pair_id"]]
        question = (pair["doc_id"], asks_the_same(pair["instruction"]))
        if question not in best:
            best[question] = row
            continue
        row["kept"] = False
        rejects.append(
            {
                "source": pair.get("source"),
                "line": None,
                "item_id": row["pair_id"],
                "reason": RejectReason.DUPLICATE_INSTRUCTION,
                "detail": f"pair {best[question]['pair_id']} of the document asks the same "
                f"and scored {best[question]['score']}",
            }
        )
    return rows, rejects


def asks_the_same(instruction: str) -> tuple[str, ...]:
    """What two questions share when they ask the same: their words' keys in order, case,
    accents, punctuation, tense, auxiliaries and articles aside. Order stays: "who killed X?"
    and "who did X kill?" ask different things."""
    keys = word_keys(fold_for_matching(instruction).split())
    return tuple(key for key in keys if key not in _NOT_ASKING)


# Pairs judged per batch: a batch's rows carry their documents' text, so memory follows the batch,
# not the shard; a document's pairs stay in one batch (one_pair_per_question compares them).
JUDGE_BATCH_PAIRS = 2_000
# Matched pairs (alternates included) instantiated per batch of documents: each is a request
# holding its passage, and a document's requests stay in one batch (its vectors try their
# alternates rank by rank). Large enough that a model engine's rounds stay full.
INSTANTIATE_BATCH_REQUESTS = 10_000
# Documents per batch for the rules engine, which remembers what it read of the last
# PARSE_CACHE_SIZE (256) documents (fi_method.templating.rules_genericizer): each rank of a batch
# revisits its documents in the same order, so a batch of more documents than that would parse
# every document again at every rank.
RULES_BATCH_DOCUMENTS = 128
# Filler kinds and slot descriptions whose vectors the rules engine keeps while it works through
# a shard. Real text names few distinct kinds (774 in 696 ShareGPT answers), so all stay found;
# the bound keeps unusual text from growing it past ~50 MB of MiniLM vectors.
REMEMBERED_KIND_VECTORS = 32_768


def document_batches(
    doc_ids: Sequence[str], most: int = JUDGE_BATCH_PAIRS, most_documents: int | None = None
) -> list[slice]:
    """Slices of rows sorted by `doc_id` holding at most `most` rows (and, when given,
    `most_documents` documents) each, a document's rows never split (a document with more rows
    than that is a batch of its own)."""
    batches: list[slice] = []
    start = end = 0
    documents = 0
    for run_end in range(1, len(doc_ids) + 1):
        if run_end < len(doc_ids) and doc_ids[run_end] == doc_ids[run_end - 1]:
            continue
        too_many = most_documents is not None and documents >= most_documents
        if (run_end - start > most or too_many) and end > start:
            batches.append(slice(start, end))
            start = end
            documents = 0
        end = run_end
        documents += 1
    if end > start:
        batches.append(slice(start, end))
    return batches


FUNNEL_STAGES = ("matched", "instantiated", "grounded", "judged", "kept")


def funnel_counts(matched: int, grounded: int, reasons: Iterable[str]) -> dict[str, int]:
    """The funnel of a shard from its `matched` passage vectors, its `grounded` pairs and the
    reasons of its rejects (instantiated_pairs' and judged_pairs'): instantiator outputs tried,
    parsed and not null, grounded, judged, kept, and the null outputs. Each reason takes its pair
    out before one count (fi_method.reasons.LOST_BEFORE); an unknown reason raises ValueError.
    `tried` is not `matched` less the removed templates: a vector tries its alternates until one
    fits."""
    reasons = Counter(reasons)
    lost = losses(reasons.elements())
    instantiated = grounded + lost["grounded"]
    judged = grounded - lost["judged"]
    return {
        "matched": matched,
        "tried": instantiated + lost["instantiated"],
        "instantiated": instantiated,
        "grounded": grounded,
        "judged": judged,
        "kept": judged - lost["kept"],
        "null": reasons[RejectReason.TEMPLATE_DOES_NOT_FIT],
    }


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
