import pytest

from fi_method.retrieval.matching import (
    GAUSSIAN_POOLING_K,
    Candidate,
    choose_templates,
    complexity_weights,
    rank_templates,
    target_distribution,
)

VECTORS_PER_DOCUMENT = 6
EVEN_TARGET = {1: 0.5, 5: 0.5}


def skewed_document(document: int) -> list[Candidate]:
    """Ten candidates per vector, 80% with one tag and 20% with five, no template shared."""
    return [
        Candidate(
            template_id=f"doc{document}-vec{vector}-t{slot}",
            n_tags=1 if slot < 8 else 5,
            similarity=0.9,
            vector_index=vector,
        )
        for vector in range(VECTORS_PER_DOCUMENT)
        for slot in range(10)
    ]


def shared_candidates() -> list[Candidate]:
    """Every vector has the same three templates as candidates."""
    return [
        Candidate(template_id=f"t{slot}", n_tags=slot + 1, similarity=0.9, vector_index=vector)
        for vector in range(VECTORS_PER_DOCUMENT)
        for slot in range(3)
    ]


def five_tag_share(target: dict[int, float]) -> float:
    chosen = [
        candidate
        for document in range(2000)
        for candidate in choose_templates(skewed_document(document), target, seed=document)
    ]
    assert len(chosen) == 2000 * VECTORS_PER_DOCUMENT
    return sum(candidate.n_tags == 5 for candidate in chosen) / len(chosen)


def test_target_distribution_is_normalised():
    assert target_distribution([1, 1, 2, 3]) == {1: 0.5, 2: 0.25, 3: 0.25}
    with pytest.raises(ValueError):
        target_distribution([])


def test_weights_are_target_over_candidate_frequency():
    candidates = skewed_document(0)[:10]
    weights = complexity_weights(candidates, EVEN_TARGET)
    assert weights[:8] == pytest.approx([0.5 / 0.8] * 8)
    assert weights[8:] == pytest.approx([0.5 / 0.2] * 2)
    assert complexity_weights(candidates, {1: 1.0})[8:] == [0.0, 0.0]


def test_same_seed_same_choice_and_seeds_differ():
    candidates = skewed_document(0)
    first = choose_templates(candidates, EVEN_TARGET, seed="doc-0")
    assert choose_templates(candidates, EVEN_TARGET, seed="doc-0") == first
    choices = {
        tuple(chosen.template_id for chosen in choose_templates(candidates, EVEN_TARGET, seed))
        for seed in range(20)
    }
    assert len(choices) > 1


def test_at_most_one_per_vector_and_no_template_twice():
    for seed in range(50):
        chosen = choose_templates(shared_candidates(), {1: 0.2, 2: 0.3, 3: 0.5}, seed)
        # Three distinct templates for six vectors: the last three vectors find nothing left.
        assert [candidate.vector_index for candidate in chosen] == [0, 1, 2]
        assert len({candidate.template_id for candidate in chosen}) == 3


def test_vectors_without_candidates_choose_nothing():
    candidates = [c for c in skewed_document(0) if c.vector_index in (0, 3)]
    chosen = choose_templates(candidates, EVEN_TARGET, seed=1)
    assert [candidate.vector_index for candidate in chosen] == [0, 3]
    assert choose_templates([], EVEN_TARGET, seed=1) == []


def test_per_passage_caps_the_choice():
    chosen = choose_templates(skewed_document(0), EVEN_TARGET, seed=1, per_passage=2)
    assert [candidate.vector_index for candidate in chosen] == [0, 1]
    assert len(choose_templates(skewed_document(0), EVEN_TARGET, 1)) == GAUSSIAN_POOLING_K + 1


def test_chosen_complexity_follows_the_target():
    assert five_tag_share(EVEN_TARGET) == pytest.approx(0.5, abs=0.05)
    # A target equal to the candidates' own distribution weighs all alike: uniform sampling.
    assert five_tag_share({1: 0.8, 5: 0.2}) == pytest.approx(0.2, abs=0.05)


def test_all_zero_weights_fall_back_to_uniform():
    candidates = skewed_document(0)
    off_target = {3: 1.0}
    assert set(complexity_weights(candidates, off_target)) == {0.0}
    chosen = choose_templates(candidates, off_target, seed=7)
    assert [candidate.vector_index for candidate in chosen] == list(range(VECTORS_PER_DOCUMENT))
    picked = {
        candidate.template_id
        for seed in range(200)
        for candidate in choose_templates(candidates[:10], off_target, seed)
    }
    assert len(picked) == 10


def test_match_chunks_maps_hits_back_to_chunks_and_applies_the_threshold():
    from fi_method.retrieval.matching import match_chunks

    chunks = [("doc-a", "a0", 0), ("doc-a", "a1", 1), ("doc-b", "b0", 0)]
    hits = [
        {"query_index": 0, "template_id": "t1", "n_tags": 1, "similarity": 0.9},  # a0, global
        {"query_index": 8, "template_id": "t2", "n_tags": 2, "similarity": 0.8},  # a1, local 2
        {"query_index": 8, "template_id": "t3", "n_tags": 2, "similarity": 0.1},  # under threshold
        {"query_index": 17, "template_id": "t1", "n_tags": 1, "similarity": 0.7},  # b0, local 5
    ]
    pairs, similarities = match_chunks(chunks, hits, 0.5, {1: 0.5, 2: 0.5}, vectors_per_chunk=6)
    assert sorted(
        (p["doc_id"], p["chunk_id"], p["template_id"], p["vector_index"]) for p in pairs
    ) == [
        ("doc-a", "a0", "t1", 0),
        ("doc-a", "a1", "t2", 2),
        ("doc-b", "b0", "t1", 5),
    ]
    assert sorted(similarities) == [0.7, 0.8, 0.9]


def test_a_long_document_gets_templates_in_proportion_to_its_passages():
    from fi_method.retrieval.matching import match_chunks

    passages = 5
    chunks = [("doc-long", f"c{p}", p) for p in range(passages)] + [("doc-short", "s0", 0)]
    hits = [
        {
            "query_index": chunk * 6 + vector,
            "template_id": f"t{vector}",
            "n_tags": 1,
            "similarity": 0.9,
        }
        for chunk in range(len(chunks))
        for vector in range(6)
    ]
    pairs, _ = match_chunks(chunks, hits, 0.5, {1: 1.0}, vectors_per_chunk=6)
    per_document = {
        doc: sum(p["doc_id"] == doc for p in pairs) for doc in ("doc-long", "doc-short")
    }
    # Six per passage: the same template may serve two passages of one document, never one twice.
    assert per_document == {"doc-long": 6 * passages, "doc-short": 6}
    for chunk_id in {p["chunk_id"] for p in pairs}:
        chosen = [p["template_id"] for p in pairs if p["chunk_id"] == chunk_id]
        assert len(chosen) == len(set(chosen))


def test_alternates_follow_the_first_choice_and_never_repeat_a_template_in_a_passage():
    candidates = skewed_document(0)
    ranked = rank_templates(candidates, EVEN_TARGET, seed="doc-0", per_vector=4)
    first = [candidate for rank, candidate in ranked if rank == 0]
    assert first == choose_templates(candidates, EVEN_TARGET, seed="doc-0")
    assert [rank for rank, _ in ranked] == sorted(rank for rank, _ in ranked)
    assert len(ranked) == VECTORS_PER_DOCUMENT * 4
    template_ids = [candidate.template_id for _, candidate in ranked]
    assert len(set(template_ids)) == len(template_ids)
    # Each vector's alternates are its own candidates.
    for rank, candidate in ranked:
        assert candidate.template_id.startswith(f"doc0-vec{candidate.vector_index}-")
    assert rank_templates(candidates, EVEN_TARGET, seed="doc-0", per_vector=4) == ranked


def test_alternates_stop_when_a_vector_runs_out_of_candidates():
    ranked = rank_templates(shared_candidates(), {1: 0.2, 2: 0.3, 3: 0.5}, seed=3, per_vector=5)
    # Three templates shared by every vector: listed once each for the whole passage.
    assert sorted(candidate.template_id for _, candidate in ranked) == ["t0", "t1", "t2"]
