"""Scoring one recipe's answers to one benchmark, stage F: mechanically where an answer can be
checked (MixEval's multiple choice, and its free-form answers when no LLM judge is configured),
by the LLM judge otherwise (MT-Bench-101's 1-10 rating, AlpacaEval's head-to-head). The judge is a
function from conversations to its outputs, so this module calls no engine itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fi_method.evaluation import benchmarks as bench
from fi_method.evaluation.benchmarks import BenchmarkItem

# Conversations in, one judge output per conversation out.
Ask = Callable[[list[list[dict]]], list[str]]


@dataclass(frozen=True)
class Aggregate:
    """One row of eval_scores for a (recipe, benchmark): a metric, its value (None when it could
    not be measured, `note` says why), who judged it and over how many items."""

    metric: str
    value: float | None
    judge: str
    n_items: int
    note: str = ""


@dataclass(frozen=True)
class ScoredItem:
    """One answer's score (None when not scored), who scored it and the judge's raw output."""

    item: BenchmarkItem
    score: float | None
    judge: str
    judge_output: str = ""


@dataclass(frozen=True)
class BenchmarkJudging:
    """The judge a benchmark is scored with: `ask` calls it, `label` names it in the scores,
    `is_llm` is False for the rules engine, which cannot judge free-form answers."""

    ask: Ask
    label: str
    is_llm: bool
    seed: int = 0


def percent_mean(values: list[float]) -> float | None:
    """The mean of 0..1 scores as a percentage, None for no value."""
    return 100.0 * sum(values) / len(values) if values else None


def score_benchmark(
    benchmark: str,
    items: list[BenchmarkItem],
    responses: list[str],
    judging: BenchmarkJudging,
    baseline: list[str] | None = None,
    baseline_name: str = "",
) -> tuple[list[Aggregate], list[ScoredItem]]:
    """The aggregate rows and per-item scores of `responses` to `items` of a generative
    `benchmark`. AlpacaEval compares each response with `baseline`'s (named `baseline_name`)."""
    if benchmark == bench.MT_BENCH_101:
        return _mt_bench_101(items, responses, judging)
    if benchmark == bench.ALPACA_EVAL:
        if baseline is None:
            raise ValueError("AlpacaEval is scored against a baseline: pass its answers")
        return _alpaca_eval(items, responses, judging, baseline, baseline_name)
    if benchmark in (bench.MIXEVAL, bench.MIXEVAL_HARD):
        return _mixeval(items, responses, judging)
    raise ValueError(
        f"unknown generative benchmark {benchmark!r}: one of {bench.GENERATIVE_BENCHMARKS}"
    )


def _mixeval(items, responses, judging: BenchmarkJudging):
    free_form = [(i, r) for i, r in zip(items, responses) if i.kind == bench.FREE_FORM]
    if judging.is_llm and free_form:
        outputs = judging.ask([bench.mixeval_judge_messages(i, r) for i, r in free_form])
        free_scores = {
            i.item_id: ScoredItem(i, bench.parse_bracketed_score(o, 0.0, 1.0), judging.label, o)
            for (i, _), o in zip(free_form, outputs)
        }
    else:
        free_scores = {
            i.item_id: ScoredItem(i, bench.score_free_form(r, i.targets), bench.MECHANICAL)
            for i, r in free_form
        }
    scored = [
        ScoredItem(item, bench.score_multiple_choice(response, item), bench.MECHANICAL)
        if item.kind == bench.MULTIPLE_CHOICE
        else free_scores[item.item_id]
        for item, response in zip(items, responses)
    ]
    free_judge = judging.label if judging.is_llm else bench.MECHANICAL
    overall_judge = free_judge if free_judge == bench.MECHANICAL else f"{free_judge} + mechanical"
    rows = []
    for metric, kind, judge in (
        ("multiple_choice", bench.MULTIPLE_CHOICE, bench.MECHANICAL),
        ("free_form", bench.FREE_FORM, free_judge),
        ("overall", None, overall_judge),
    ):
        of_kind = [s for s in scored if kind is None or s.item.kind == kind]
        values = [s.score for s in of_kind if s.score is not None]
        unparsed = len(of_kind) - len(values)
        note = f"{unparsed} judge outputs without a score, left out" if unparsed else ""
        rows.append(Aggregate(metric, percent_mean(values), judge, len(values), note))
    return rows, scored


def _mt_bench_101(items, responses, judging: BenchmarkJudging):
    if not judging.is_llm:
        return [
            Aggregate(
                "score", None, bench.NEEDS_LLM_JUDGE, 0, "MT-Bench-101 is judged 1-10 by an LLM"
            )
        ], [ScoredItem(i, None, bench.NEEDS_LLM_JUDGE) for i in items]
    outputs = judging.ask(
        [bench.mt_bench_101_judge_messages(i, r) for i, r in zip(items, responses)]
    )
    scored = [
        ScoredItem(i, bench.parse_bracketed_score(o, 1.0, 10.0), judging.label, o)
        for i, o in zip(items, outputs)
    ]
    values = [s.score for s in scored if s.score is not None]
    note = f"{len(scored) - len(values)} judge outputs without a rating, left out"
    mean = sum(values) / len(values) if values else None
    return [Aggregate("score", mean, judging.label, len(values), note)], scored


def _alpaca_eval(items, responses, judging: BenchmarkJudging, baseline, baseline_name):
    metrics = ("lc_win_rate", "win_rate")
    if not judging.is_llm:
        return [
            Aggregate(m, None, bench.NEEDS_LLM_JUDGE, 0, f"head-to-head against {baseline_name}")
            for m in metrics
        ], [ScoredItem(i, None, bench.NEEDS_LLM_JUDGE) for i in items]
    first = [bench.candidate_goes_first(i.item_id, judging.seed) for i in items]
    outputs = judging.ask(
        [
            bench.alpaca_eval_judge_messages(i.question, *((r, b) if f else (b, r)))
            for i, r, b, f in zip(items, responses, baseline, first)
        ]
    )
    scored, kept = [], []
    for item, response, opponent, goes_first, output in zip(
        items, responses, baseline, first, outputs
    ):
        choice = bench.parse_preference(output)
        win = None if choice is None else float((choice == "m") == goes_first)
        scored.append(ScoredItem(item, win, judging.label, output))
        if win is not None:
            kept.append((win, len(response), len(opponent)))
    if not kept:
        return [
            Aggregate(m, None, judging.label, 0, "no judge output named m or M") for m in metrics
        ], scored
    raw, controlled = bench.win_rates(*map(list, zip(*kept)))
    note = f"against {baseline_name}; {len(items) - len(kept)} unparsed judge outputs left out"
    return [
        Aggregate("lc_win_rate", controlled, judging.label, len(kept), note),
        Aggregate("win_rate", raw, judging.label, len(kept), note),
    ], scored
