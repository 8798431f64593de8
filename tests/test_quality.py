"""The checks that guard an experiment, on the distributions of realistic partitions: each passes
what a healthy run writes and fails what a broken one does."""

import pytest

from fi_method.corpus.decontamination import EvalItem, NGramIndex
from fi_method.corpus.packing import load_training_tokenizer, pack_shard
from fi_method.evaluation.fidelity import (
    Figure,
    packing_figures,
    render_markdown,
    synthesis_figures,
)
from fi_method.samples import wikipedia_articles
from fi_method.synthesis.quality import (
    MAX_JUDGE_PASS_RATE,
    MAX_NULL_RATE,
    MAX_UNMATCHED_DOCUMENT_SHARE,
    MIN_PAIRS_FOR_PASS_RATE,
    dominant_templates,
    leaked_eval_items,
    share_outside,
    template_share_limit,
)


@pytest.fixture(scope="module")
def articles():
    return [(a["id"], a["text"]) for a in wikipedia_articles(limit=4)]


def test_non_instructional_halves_fit_their_budget(articles):
    """A document cut in two plus the format's tokens is longer than the document: the answer
    is cut to fit, so the very first document is not dropped."""
    from fi_method.synthesis.continuations import halve

    tokenizer = load_training_tokenizer()
    candidates = {}
    for doc_id, text in articles:
        first, second = halve(text)
        candidates[doc_id] = [{"sample_id": doc_id, "instruction": first, "answer": second}]
    rows, stats = pack_shard(articles, candidates, "non_instructional", tokenizer, seed=0)
    assert [row["doc_id"] for row in rows] == [doc_id for doc_id, _ in articles]
    assert all(row["n_tokens"] <= row["budget_tokens"] for row in rows)
    assert stats.samples_cut_to_budget >= 1
    assert stats.packed_tokens >= 0.98 * stats.document_tokens


def test_one_template_crowding_out_the_rest_is_found():
    healthy = [f"t{i % 40}" for i in range(400)]
    assert dominant_templates(healthy) == []
    # "Tell me about <fi>a topic</fi>" matched every passage: half of all kept pairs.
    crowded = ["t-generic"] * 200 + [f"t{i % 40}" for i in range(200)]
    [line] = dominant_templates(crowded)
    assert line.startswith("template t-generic: 200 of 400 pairs (50.0%)")


def test_the_template_share_limit_fits_small_runs_and_the_papers_scale():
    assert template_share_limit(40) == pytest.approx(0.25)
    assert template_share_limit(4_300_000) == pytest.approx(0.0009)


@pytest.mark.parametrize(("kept", "passes"), [(58, True), (3, True), (100, False), (97, False)])
def test_a_judge_keeping_everything_fails(kept, passes):
    """The rules judge scored nonsense 5: a judge that keeps all is not judging."""
    lines = share_outside("pairs kept", kept, 100, 0.0, MAX_JUDGE_PASS_RATE, "paper ~58%")
    assert (lines == []) is passes


@pytest.mark.parametrize(("kept", "judged", "passes"), [(21, 22, True), (50, 50, False)])
def test_a_pass_rate_is_judged_over_enough_pairs(kept, judged, passes):
    """A judge keeping 80 % of pairs keeps 21 of 22 one time in twenty; all of 50, never."""
    lines = share_outside(
        "pairs kept", kept, judged, 0.0, MAX_JUDGE_PASS_RATE, "", MIN_PAIRS_FOR_PASS_RATE
    )
    assert (lines == []) is passes


def test_an_instantiator_answering_null_to_most_matches_fails():
    # A model given the wrong prompt format answers null to 180 of 200 matches.
    assert share_outside("null", 180, 200, 0.0, MAX_NULL_RATE, "paper ~5%")
    assert share_outside("null", 12, 200, 0.0, MAX_NULL_RATE, "paper ~5%") == []


def test_too_few_items_say_nothing_yet():
    assert share_outside("pairs kept", 5, 5, 0.0, MAX_JUDGE_PASS_RATE, "paper ~58%") == []
    assert share_outside("unmatched", 12, 12, 0.0, MAX_UNMATCHED_DOCUMENT_SHARE, "", 5)


def test_the_fidelity_report_puts_each_figure_beside_the_papers():
    figures = synthesis_figures(12, 300, 15, 240, ["t1"] * 10 + ["t2"] * 130, [0.9] * 140)
    figures += packing_figures(
        {"standard": 1000, "fineinstructions": 990}, {"fineinstructions": 36}, 12
    )
    table = render_markdown(figures)
    assert "| judge pass rate | 58.3% | 58.0% |" in table
    assert "| instantiator null rate | 5.0% | 5.0% |" in table
    assert "| fineinstructions: tokens / standard's | 99.0% | 100.0% |" in table
    assert "| largest template share of kept pairs | 92.9% | 0.09% |" in table
    assert "| fineinstructions: samples per document | 3 | 3 |" in table
    assert Figure("x", None).cells() == ("-", "-")


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


def test_the_papers_threshold_on_another_embedder_leaves_documents_unmatched():
    """0.865 belongs to the paper's fine-tuned BGE-M3: with MiniLM no real article reaches it,
    and the documents check says so; MiniLM's calibrated threshold matches most of them."""
    from sentence_transformers import SentenceTransformer

    from fi_method.retrieval.matching import PAPER_SIMILARITY_THRESHOLD, match_chunks
    from fi_method.templating.ifbench import ifbench_queries
    from fi_method.templating.rules_genericizer import rules_genericize
    from fi_method.templating.templates import TemplateError
    from fi_resources.embedder import default_similarity_threshold
    from fi_resources.models import MINILM, sentence_transformer_source

    descriptions = []
    for row in ifbench_queries(limit=40):
        try:
            descriptions.append(rules_genericize(row["query"]).compatible_document_description)
        except TemplateError:
            continue
    articles = [a["text"][:1500] for a in wikipedia_articles(limit=6)]
    model = SentenceTransformer(sentence_transformer_source(MINILM))
    similarity = (
        model.encode(articles, normalize_embeddings=True)
        @ model.encode(descriptions, normalize_embeddings=True).T
    )
    chunks = [(f"doc-{i}", f"chunk-{i}", 0) for i in range(len(articles))]
    hits = [
        {"query_index": i, "template_id": f"t{j}", "n_tags": 1, "similarity": float(value)}
        for i, row in enumerate(similarity)
        for j, value in enumerate(row)
    ]

    def unmatched(threshold: float) -> list[str]:
        pairs, _ = match_chunks(chunks, hits, threshold, {1: 1.0}, vectors_per_chunk=1)
        missing = len(articles) - len({p["doc_id"] for p in pairs})
        return share_outside(
            "unmatched", missing, len(articles), 0.0, MAX_UNMATCHED_DOCUMENT_SHARE, "", 5
        )

    assert unmatched(PAPER_SIMILARITY_THRESHOLD)
    assert unmatched(default_similarity_threshold(MINILM)) == []
