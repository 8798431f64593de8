"""The checks that guard an experiment, on tiny literal rows: each finds exactly the bad rows."""

from fi_method.decontamination import EvalItem, NGramIndex
from fi_method.quality import (
    below_minimum,
    duplicate_ids,
    invalid_templates,
    judge_score_errors,
    leaked_eval_items,
)


def test_invalid_templates_are_found_and_valid_ones_pass():
    rows = [
        {"template_id": "ok", "template": "Is <fi>a city</fi> safe?", "n_tags": 1},
        {"template_id": "untagged", "template": "Is Paris safe?", "n_tags": 0},
        {"template_id": "nested", "template": "Is <fi>a <fi>x</fi></fi> safe?", "n_tags": 1},
        {"template_id": "miscounted", "template": "<fi>a</fi> or <fi>b</fi>?", "n_tags": 1},
    ]
    failures = invalid_templates(rows)
    assert [line.split(":")[0] for line in failures] == ["untagged", "nested", "miscounted"]


def test_values_below_a_minimum_are_found():
    rows = [{"id": "a", "x": 0.9}, {"id": "b", "x": 0.79}, {"id": "c", "x": None}]
    assert below_minimum(rows, "id", "x", 0.8) == ["b: x 0.79 < 0.8", "c: x None < 0.8"]


def test_duplicate_ids_are_counted():
    assert duplicate_ids(["p1", "p2", "p1", "p3", "p1"]) == ["p1: 3 times"]
    assert duplicate_ids(["p1", "p2"]) == []


def test_judge_scores_outside_the_rubric_or_a_wrong_kept_flag_are_found():
    rows = [
        {"pair_id": "good", "score": 4, "kept": True},
        {"pair_id": "low", "score": 2, "kept": False},
        {"pair_id": "six", "score": 6, "kept": True},
        {"pair_id": "flag", "score": 3, "kept": True},
    ]
    assert judge_score_errors(rows, min_score=4) == [
        "six: score 6 outside 1..5",
        "flag: kept=True with score 3",
    ]


def test_a_training_sample_that_quotes_an_eval_item_is_found():
    index = NGramIndex(
        [
            EvalItem(
                "mixeval", "free-form/7", "Splenitis is the inflammation of which part of the body?"
            )
        ]
    )
    rows = [
        {"sample_id": "clean", "text": "The spleen filters blood and stores white blood cells."},
        {"sample_id": "part", "text": "Splenitis is the inflammation of which part of a cell"},
        {
            "sample_id": "leak",
            "text": "Instruction: Splenitis is the inflammation of which part of the body?\n\n"
            "Answer: The spleen.",
        },
    ]
    assert leaked_eval_items(rows, index) == (
        ["leak: mixeval free-form/7 (100% of its words)"],
        ["part: mixeval free-form/7 (80% of its words)"],
    )
