from collections import Counter

import pytest

from fi_method.corpus.decontamination import (
    TULU3_NGRAM,
    EvalItem,
    NGramIndex,
    default_index,
    load_eval_items,
)
from fi_method.text import fold_for_matching


@pytest.fixture(scope="module")
def items() -> list[EvalItem]:
    return load_eval_items()


@pytest.fixture(scope="module")
def by_id(items) -> dict[tuple[str, str], EvalItem]:
    return {(item.benchmark, item.item_id): item for item in items}


@pytest.fixture(scope="module")
def index() -> NGramIndex:
    return default_index()


def test_every_benchmark_loads_with_its_rows(items):
    assert all(item.text.strip() for item in items)
    assert len({(item.benchmark, item.item_id) for item in items}) == len(items)
    prompts = Counter(
        (item.benchmark, item.item_id.split("/")[0])
        for item in items
        if item.benchmark.startswith("mixeval") and not item.item_id.endswith("/context")
    )
    # The 2024-08-11 multiple-choice file of MixEval holds 1995 questions, not 2000.
    assert prompts == {
        ("mixeval", "free-form"): 2000,
        ("mixeval", "multiple-choice"): 1995,
        ("mixeval_hard", "free-form"): 500,
        ("mixeval_hard", "multiple-choice"): 500,
    }
    contexts = Counter(item.benchmark for item in items if item.item_id.endswith("/context"))
    assert contexts == {"mixeval": 473 + 986, "mixeval_hard": 122 + 238}

    def ids(benchmark: str) -> set[str]:
        return {item.item_id for item in items if item.benchmark == benchmark}

    def parents(benchmark: str) -> set[str]:
        return {item_id.split("/")[0] for item_id in ids(benchmark)}

    assert len(parents("mt_bench_101")) == 1388  # dialogues
    assert len(ids("mt_bench_101")) == 4208  # their user turns
    assert len(ids("alpaca_eval")) == 805
    assert len(parents("mt_bench")) == 80  # questions
    assert len(ids("mt_bench")) == 160  # their two turns


def test_the_default_index_is_built_once(index):
    assert default_index() is index
    assert len(index) > 11_000


def test_an_alpaca_eval_instruction_is_caught(index, by_id):
    instruction = by_id["alpaca_eval", "0"].text
    assert instruction.startswith("What are the names of some famous actors")
    variants = [
        instruction,
        instruction.upper().replace("?", "!!"),
        f"I'm writing a theatre quiz for my friends. {instruction} Give me ten names, one line each.",
    ]
    for query in variants:
        found = index.match(query)
        assert found is not None, query
        assert (found.benchmark, found.item_id, found.coverage) == ("alpaca_eval", "0", 1.0)


def test_an_mt_bench_turn_is_caught(index, by_id):
    turn = by_id["mt_bench", "82/turn1"].text
    variants = [
        turn,
        turn.lower().replace("'", "").replace(",", ""),
        f"hi! {turn} Thanks a lot, this is for my job at a bank.",
    ]
    for query in variants:
        found = index.match(query)
        assert found is not None, query
        assert (found.benchmark, found.item_id) == ("mt_bench", "82/turn1")


def test_an_unrelated_query_is_clean(index):
    assert index.match("How do I repot a cactus without hurting my hands?") is None
    assert index.match("Write a haiku about my cat asleep in the sun on a Sunday.") is None
    assert index.match("") is None


def test_one_shared_ngram_with_a_long_item_is_not_enough(index, by_id):
    item = by_id["alpaca_eval", "9"]
    item_words = fold_for_matching(item.text).split()
    assert len(item_words) == 42
    shared = " ".join(item_words[15 : 15 + TULU3_NGRAM])
    query = f"My grandmother told stories by the fire, {shared}, and I never forgot them."
    assert index.match(query) is None
    only_item = NGramIndex([item], min_coverage=0.0).match(query)
    assert only_item is not None
    assert only_item.coverage == pytest.approx(TULU3_NGRAM / len(item_words))


def test_a_short_item_matches_only_its_whole_word_sequence(index, by_id):
    item = by_id["mixeval", "free-form/515"]
    assert item.text == "What type of animal is a frogmouth?"
    assert len(item.text.split()) < TULU3_NGRAM
    found = index.match("what type of animal is a Frogmouth")
    assert (found.benchmark, found.item_id, found.coverage) == ("mixeval", "free-form/515", 1.0)
    longer = f"{item.text} I saw one at the zoo yesterday and it looked like an owl."
    assert index.match(longer) is None
    assert index.match("What type of animal is a") is None


def test_the_best_covering_item_wins():
    first = EvalItem("one", "a", "the quick brown fox jumps over the lazy dog every morning")
    second = EvalItem("two", "b", "the quick brown fox jumps over the lazy dog")
    found = NGramIndex([first, second]).match("the quick brown fox jumps over the lazy dog")
    assert (found.benchmark, found.item_id, found.coverage) == ("two", "b", 1.0)
