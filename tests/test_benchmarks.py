"""Benchmarks: the shipped items load, the model prompt is the training format, and answers are
scored mechanically or parsed from noisy judge outputs as each benchmark defines."""

import pytest

from fi_method.evaluation import benchmarks as bench
from fi_method.evaluation.eval_report import render_markdown


def _item(**fields) -> bench.BenchmarkItem:
    defaults = {"benchmark": "mixeval", "item_id": "x", "kind": bench.FREE_FORM, "question": "q"}
    return bench.BenchmarkItem(**{**defaults, **fields})


def test_every_generative_benchmark_loads_its_shipped_items():
    sizes = {b: len(bench.load_benchmark(b)) for b in bench.GENERATIVE_BENCHMARKS}
    assert sizes == {
        "mixeval": 3995,
        "mixeval_hard": 1000,
        "mt_bench_101": 1388,
        "alpaca_eval": 805,
    }
    choice = next(i for i in bench.load_benchmark("mixeval") if i.kind == bench.MULTIPLE_CHOICE)
    assert "\nA. " in choice.question and choice.question.endswith("directly.")
    assert choice.answers and choice.answers[0] < len(choice.options)
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.load_benchmark("mmlu")


def test_items_are_sampled_per_kind_and_the_same_for_the_same_seed():
    items = bench.load_benchmark("mixeval_hard")
    first = bench.select_items(items, 5, seed=0)
    assert [i.item_id for i in first] == [i.item_id for i in bench.select_items(items, 5, seed=0)]
    assert [i.item_id for i in first] != [i.item_id for i in bench.select_items(items, 5, seed=1)]
    assert sorted(i.kind for i in first) == [bench.FREE_FORM] * 5 + [bench.MULTIPLE_CHOICE] * 5
    assert len(bench.select_items(items, 0, seed=0)) == len(items)


def test_the_model_is_prompted_in_its_training_format_and_its_next_pair_is_cut():
    assert bench.model_prompt("What is 2+2?") == "Instruction: What is 2+2?\n\nAnswer:"
    assert bench.clean_response(" 4.\n\nInstruction: What is 3+3?\n\nAnswer: 6") == "4."


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("B", 1),
        ("(C) because it is", 2),
        ("Answer: A", 0),
        ("The answer is D.", 3),
        ("b.", 1),
        ("a", 0),
        ("a cat sat on the mat", None),  # the article, not option A
        ("E", None),  # no fifth option
        ("Antibodies attach to an invading virus as a target marker.", 1),
        ("", None),
    ],
)
def test_multiple_choice_answers_are_parsed_from_noisy_outputs(response, expected):
    options = (
        "Antibodies produce proteins.",
        "Antibodies attach to an invading virus as a target marker.",
        "Antibodies engulf the virus.",
        "Antibodies release enzymes.",
    )
    assert bench.parse_choice(response, options) == expected


def test_free_form_answers_match_after_normalisation_only():
    targets = ("Mandy Rice-Davies", "Mandy Rice Davies")
    assert bench.score_free_form("mandy rice davies.", targets) == 1.0
    assert bench.score_free_form("The Spleen! It filters blood.", ("spleen",)) == 1.0
    assert bench.score_free_form("It was probably Mandy Rice-Davies", targets) == 0.0
    assert bench.score_free_form("", targets) == 0.0


@pytest.mark.parametrize(
    ("output", "low", "high", "expected"),
    [
        ("The answer matches. The correctness score: [[0.8]]", 0, 1, 0.8),
        ("[[1.0]] ... on reflection [[ 0.5 ]]", 0, 1, 0.5),
        ("Rating: [[7]]", 1, 10, 7.0),
        ("Rating: [[11]]", 1, 10, None),
        ("score: 0.8", 0, 1, None),
        ("Rating: [[seven]]", 1, 10, None),
    ],
)
def test_bracketed_judge_scores_are_parsed_from_noisy_outputs(output, low, high, expected):
    assert bench.parse_bracketed_score(output, low, high) == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("m", "m"),
        ("M\n", "M"),
        ("Output (M) is better", "M"),
        ("Best output: m", "m"),
        ("neither", None),
    ],
)
def test_head_to_head_preferences_are_parsed(output, expected):
    assert bench.parse_preference(output) == expected


def test_judge_prompts_carry_the_benchmarks_formats():
    item = _item(targets=("375000",), extra={"prompt": "How many?"})
    text = bench.mixeval_judge_messages(item, "375,000")[1]["content"]
    assert "<answer 1> 375000" in text and "[[0.5]]" in text and "How many?" in text
    mt = bench.mt_bench_101_judge_messages(_item(reference="ref", task="GR"), "mine")
    assert "[[5]]" in mt[0]["content"] and "[Reference Answer]\nref" in mt[1]["content"]
    sides = {bench.candidate_goes_first(str(i), seed=0) for i in range(20)}
    assert sides == {True, False}


def test_length_controlled_win_rate_discounts_wins_bought_with_length():
    # The candidate wins only when it is much longer: at equal length it would lose.
    prefs = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    longer = [900, 800, 950, 100, 120, 90, 870, 110]
    base = [300] * 8
    raw, controlled = bench.win_rates(prefs, longer, base)
    assert raw == 50.0
    assert controlled < 25.0
    wins_when_short = bench.win_rates([1.0, 1.0, 1.0, 0.0], [100, 110, 90, 900], [300] * 4)
    assert wins_when_short[1] > wins_when_short[0]
    assert bench.win_rates([1.0, 1.0], [5, 5], [3, 3]) == (100.0, 100.0)
    with pytest.raises(ValueError):
        bench.win_rates([], [], [])


def test_the_report_marks_mechanical_and_missing_scores():
    rows = [
        {
            "recipe": "standard",
            "benchmark": "mixeval",
            "metric": "overall",
            "value": 12.5,
            "judge": bench.MECHANICAL,
            "n_items": 16,
            "note": "",
        },
        {
            "recipe": "standard",
            "benchmark": "mt_bench_101",
            "metric": "score",
            "value": None,
            "judge": bench.NEEDS_LLM_JUDGE,
            "n_items": 0,
            "note": "",
        },
        {
            "recipe": "standard",
            "benchmark": "heldout_nll",
            "metric": "answer_nll",
            "value": 7.25,
            "judge": bench.OBJECTIVE,
            "n_items": 3,
            "note": "",
        },
    ]
    table = render_markdown(rows).split("\n\n")[1]
    assert "| standard | 7.25 | 12.50 † | not run | n/a ‡ | not run |" in table
