"""Scoring one recipe's answers to one benchmark, on the shipped benchmark items: mechanically
where an answer can be checked, by the judge's outputs otherwise."""

import pytest

from fi_method.evaluation import benchmarks as bench
from fi_method.evaluation.scoring import BenchmarkJudging, score_benchmark


def _items(benchmark: str, per_kind: int = 3):
    return bench.select_items(bench.load_benchmark(benchmark), per_kind, seed=0)


def _never_asked(conversations):
    raise AssertionError("a mechanical score asked the judge")


MECHANICAL = BenchmarkJudging(_never_asked, "rules", is_llm=False)


def test_mixeval_gold_answers_score_full_and_wrong_ones_nothing_without_a_judge():
    items = _items(bench.MIXEVAL)
    gold = [
        item.targets[0]
        if item.kind == bench.FREE_FORM
        else f"{bench.OPTION_LETTERS[item.answers[0]]}. {item.options[item.answers[0]]}"
        for item in items
    ]
    rows, scored = score_benchmark(bench.MIXEVAL, items, gold, MECHANICAL)
    assert {row.metric: row.value for row in rows} == {
        "multiple_choice": 100.0,
        "free_form": 100.0,
        "overall": 100.0,
    }
    assert {each.judge for each in scored} == {bench.MECHANICAL}
    rows, _ = score_benchmark(bench.MIXEVAL, items, ["I do not know."] * len(items), MECHANICAL)
    assert {row.metric: row.value for row in rows}["overall"] == 0.0


def test_an_llm_judge_scores_free_form_answers_and_its_unparsed_outputs_are_left_out():
    items = _items(bench.MIXEVAL_HARD)
    free_form = [item for item in items if item.kind == bench.FREE_FORM]
    outputs = ["[[1.0]]"] + ["no score here"] * (len(free_form) - 1)
    asked = []

    def ask(conversations):
        asked.append(conversations)
        return outputs

    judging = BenchmarkJudging(ask, "a judge", is_llm=True)
    rows, scored = score_benchmark(bench.MIXEVAL_HARD, items, ["x"] * len(items), judging)
    assert len(asked) == 1 and len(asked[0]) == len(free_form)
    free = next(row for row in rows if row.metric == "free_form")
    assert (free.value, free.n_items, free.judge) == (100.0, 1, "a judge")
    assert f"{len(free_form) - 1} judge outputs without a score" in free.note
    assert [each.judge_output for each in scored if each.item.kind == bench.FREE_FORM] == outputs


def test_alpaca_eval_counts_wins_whichever_side_the_candidate_was_shown_on():
    items = _items(bench.ALPACA_EVAL, 4)

    def prefer_the_detailed(conversations):
        # The candidate is shown as m or M by a seeded coin per item; this judge finds it.
        first = [
            c[-1]["content"].split("## Output M")[0].split("## Output m")[1] for c in conversations
        ]
        return ["m" if "a detailed answer" in shown else "M" for shown in first]

    judging = BenchmarkJudging(prefer_the_detailed, "a judge", is_llm=True, seed=3)
    responses = ["a detailed answer"] * len(items)
    baseline = ["short"] * len(items)
    rows, scored = score_benchmark(
        bench.ALPACA_EVAL, items, responses, judging, baseline, "the references"
    )
    sides = {bench.candidate_goes_first(item.item_id, 3) for item in items}
    assert sides == {True, False}, "the seed shows the candidate on both sides"
    assert [each.score for each in scored] == [1.0] * len(items)
    win_rate = next(row for row in rows if row.metric == "win_rate")
    assert (win_rate.value, win_rate.n_items) == (100.0, len(items))
    assert "against the references" in win_rate.note


def test_judge_only_benchmarks_say_they_need_an_llm_judge_and_alpaca_eval_needs_a_baseline():
    items = _items(bench.MT_BENCH_101, 2)
    rows, scored = score_benchmark(bench.MT_BENCH_101, items, ["x"] * len(items), MECHANICAL)
    assert [(row.value, row.judge) for row in rows] == [(None, bench.NEEDS_LLM_JUDGE)]
    assert all(each.score is None for each in scored)
    with pytest.raises(ValueError, match="baseline"):
        score_benchmark(bench.ALPACA_EVAL, _items(bench.ALPACA_EVAL, 1), ["x"], MECHANICAL)
    with pytest.raises(ValueError, match="unknown generative benchmark"):
        score_benchmark(bench.HELDOUT_NLL, [], [], MECHANICAL)
