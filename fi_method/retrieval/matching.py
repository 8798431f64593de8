"""Template matching, the retrieval rule of FineInstructions stage B: which instruction templates a
pre-training document is paired with.

The unit of matching is a passage: a chunk of the document that fits the embedder's window
(fi_method.retrieval.chunking). The paper embeds whole web pages, about the length its embedder
reads at once, and gives each up to K + 1 = 6 templates; a 4,500-token article matched as one unit
would get 6 short pairs and could never fill its own token budget. Matching per passage gives a
document templates in proportion to its length, and keeps lineage to the document through the
doc_id.

Each passage is embedded as K + 1 query vectors: index 0 is the global vector (the whole
passage), 1..K are local ones (Gaussian-pooled around evenly spaced points of it). For each vector,
the candidate templates are those whose cosine similarity to it exceeds a threshold. Among a
vector's candidates one template is drawn at random, weighted so that the complexity (number of
`<fi>` slots, `n_tags`) of the chosen templates follows a target distribution, by default the
complexity of templates genericized from real user queries. Without the weighting, simple
templates, which match far more passages, would crowd out complex ones.

The rule as implemented here:
1. A passage's vectors are visited in order of their index, 0..K.
2. A vector draws one of its candidates not already chosen for an earlier vector of the same
   passage, so a passage gets at most one template per vector and never one template twice.
   A vector with no such candidate chooses nothing.
3. The draw is weighted by `complexity_weights`; the random generator is seeded from a stable
   hash of the passage's id, so a rerun pairs every passage with the same templates.
4. Behind each vector's choice (rank 0) wait its alternates (rank 1, 2, ...): further weighted
   draws among its candidates, round by round over the vectors, a template listed at most once per
   passage. The instantiator tries a vector's alternates in rank order when the templates before
   them do not fit the passage, so a passage still gets at most one pair per vector.

K defaults to the paper's text, 5. The released retriever's code uses `coverage_chunks=10` on
whole documents of up to 8k tokens; on passages of at most the embedder's window, six vectors
already sit closer together than ten do on a long document (FI_POOLING_K changes it).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

GAUSSIAN_POOLING_K = 5
# Templates retrieved per passage vector, best first; candidates are those above the threshold.
CANDIDATES_PER_VECTOR = 20
# Of those, how many a vector's instantiation tries in turn. Offline, with a library of
# thousands of templates rather than the paper's 18M, the template drawn first rarely fits the
# passage; trying ten keeps the yield of the demo's passages without a template library that fits.
TEMPLATES_PER_VECTOR = 10
# The paper's threshold for its fine-tuned BGE-M3 embedder; cosine similarities are not
# comparable across embedders, so another embedder needs its own threshold.
PAPER_SIMILARITY_THRESHOLD = 0.865
# matched_pairs' code version: change it whenever the rule above (match_chunks, rank_templates,
# choose_templates, the weights) chooses otherwise. tests/goldens/matching.json holds its choices
# for real retrieval results; tests/test_goldens.py fails when they change while this does not.
MATCHING_VERSION = "2"


@dataclass(frozen=True)
class Candidate:
    """A template whose similarity to one of a document's query vectors passed the threshold."""

    template_id: str
    n_tags: int
    similarity: float
    vector_index: int


def target_distribution(n_tags: Iterable[int]) -> dict[int, float]:
    """Share of each complexity (`n_tags`) among the given templates; the shares sum to 1."""
    return complexity_shares(Counter(n_tags))


def complexity_shares(counts: Mapping[int, int]) -> dict[int, float]:
    """Share of each complexity among templates counted per complexity; the shares sum to 1."""
    total = sum(counts.values())
    if total == 0:
        raise ValueError("target distribution needs at least one template")
    return {complexity: count / total for complexity, count in sorted(counts.items())}


def complexity_weights(candidates: list[Candidate], target: dict[int, float]) -> list[float]:
    """Sampling weight of each candidate of one document, in the order given:

        weight(c) = target[c.n_tags] / candidate_freq(c.n_tags)

    where candidate_freq(n) is the share of the document's candidates (every vector's, one entry
    per candidate) with n tags. Rare complexities are boosted and common ones damped, so that a
    draw among candidates whose complexities are distributed like the document's yields each
    complexity n with probability target[n].

    A complexity absent from the target gets weight 0: the target says no real query is that
    complex, so such a template is drawn only through the uniform fallback of `choose_templates`.
    """
    counts = Counter(candidate.n_tags for candidate in candidates)
    total = len(candidates)
    return [
        target.get(candidate.n_tags, 0.0) / (counts[candidate.n_tags] / total)
        for candidate in candidates
    ]


def seeded_generator(seed: int | str) -> np.random.Generator:
    """A numpy generator seeded from a SHA-256 of `seed`, stable across processes and runs
    (Python's `hash()` of a string is salted per process)."""
    digest = hashlib.sha256(str(seed).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def choose_templates(
    candidates: list[Candidate],
    target: dict[int, float],
    seed: int | str,
    per_passage: int = GAUSSIAN_POOLING_K + 1,
) -> list[Candidate]:
    """The templates chosen for one passage from its candidates (all vectors together), at most
    one per vector index and at most `per_passage` in all, in order of vector index.

    Each vector draws among its candidates not yet chosen, with probability proportional to
    `complexity_weights`; when all of those weights are 0 it draws uniformly instead, so a
    passage is never left without a template merely because its candidates are off-target.
    The same candidates, target and seed always give the same choice.
    """
    if not candidates:
        return []
    generator = seeded_generator(seed)
    weights = complexity_weights(candidates, target)
    weighted_by_vector: dict[int, list[tuple[Candidate, float]]] = {}
    for candidate, weight in zip(candidates, weights, strict=True):
        weighted_by_vector.setdefault(candidate.vector_index, []).append((candidate, weight))

    chosen: list[Candidate] = []
    chosen_template_ids: set[str] = set()
    for vector_index in sorted(weighted_by_vector):
        if len(chosen) >= per_passage:
            break
        available = [
            (candidate, weight)
            for candidate, weight in weighted_by_vector[vector_index]
            if candidate.template_id not in chosen_template_ids
        ]
        if not available:
            continue
        available_weights = np.array([weight for _, weight in available], dtype=float)
        total_weight = available_weights.sum()
        probabilities = available_weights / total_weight if total_weight > 0 else None
        picked, _ = available[generator.choice(len(available), p=probabilities)]
        chosen.append(picked)
        chosen_template_ids.add(picked.template_id)
    return chosen


def rank_templates(
    candidates: list[Candidate],
    target: dict[int, float],
    seed: int | str,
    per_vector: int = 1,
    per_passage: int = GAUSSIAN_POOLING_K + 1,
) -> list[tuple[int, Candidate]]:
    """`choose_templates`' choice for one passage as rank 0, followed by up to `per_vector - 1`
    alternates per chosen vector (ranks 1..): each round draws, for every vector in order of
    index, one more of its candidates not yet listed for the passage, weighted as the first
    draw. Seeded: the same candidates, target and seed always give the same list."""
    chosen = choose_templates(candidates, target, seed, per_passage)
    ranked = [(0, candidate) for candidate in chosen]
    if per_vector <= 1 or not chosen:
        return ranked
    generator = seeded_generator(f"{seed}/alternates")
    weight_of = dict(zip(map(id, candidates), complexity_weights(candidates, target), strict=True))
    listed = {candidate.template_id for candidate in chosen}
    vectors = [candidate.vector_index for candidate in chosen]
    for rank in range(1, per_vector):
        for vector_index in vectors:
            available = [
                candidate
                for candidate in candidates
                if candidate.vector_index == vector_index and candidate.template_id not in listed
            ]
            if not available:
                continue
            weights = np.array([weight_of[id(candidate)] for candidate in available], dtype=float)
            probabilities = weights / weights.sum() if weights.sum() > 0 else None
            picked = available[generator.choice(len(available), p=probabilities)]
            ranked.append((rank, picked))
            listed.add(picked.template_id)
    return ranked


# Calibration: the paper reports ~3 kept pairs per document out of up to 6, so a threshold is
# calibrated to give half of all passage vectors at least one candidate template.
CALIBRATION_VECTOR_SHARE = 0.5


def propose_threshold(
    best_similarities: Iterable[float], vector_share: float = CALIBRATION_VECTOR_SHARE
) -> float:
    """The similarity threshold under which `vector_share` of document vectors would keep at least
    one candidate: the (1 - share) quantile of each vector's best template similarity."""
    values = np.sort(np.asarray(list(best_similarities), dtype=np.float64))
    if not len(values):
        raise ValueError(
            "no similarities to calibrate on: materialize document_chunks and template_index first"
        )
    if not 0.0 < vector_share < 1.0:
        raise ValueError(f"vector_share must be in (0, 1), got {vector_share}")
    return float(np.quantile(values, 1.0 - vector_share))


def match_chunks(
    chunks: list[tuple[str, str, int]],
    hits: list[dict],
    threshold: float,
    target: dict[int, float],
    vectors_per_chunk: int,
    per_vector: int = 1,
) -> tuple[list[dict], list[float]]:
    """Matched pairs of a shard from one batched retrieval. `chunks` are (doc_id, chunk_id,
    position) in the order their `vectors_per_chunk` vectors were sent; `hits` are rows of
    `query_index`, `template_id`, `n_tags`, `similarity`. Candidates above `threshold` are
    sampled per passage (seeded by chunk_id), one per vector, with up to `per_vector - 1`
    alternates behind it (`rank_templates`). Returns the pair rows (`doc_id`, `chunk_id`,
    `template_id`, `similarity`, `vector_index` 0..K, `n_tags`, `rank`) and the similarities of
    every candidate, for reporting."""
    candidates_by_chunk: dict[int, list[Candidate]] = {}
    for hit in hits:
        if hit["similarity"] <= threshold:
            continue
        chunk, vector = divmod(hit["query_index"], vectors_per_chunk)
        candidates_by_chunk.setdefault(chunk, []).append(
            Candidate(hit["template_id"], hit["n_tags"], hit["similarity"], vector)
        )
    pairs = []
    for chunk in sorted(candidates_by_chunk):
        doc_id, chunk_id, _ = chunks[chunk]
        ranked = rank_templates(candidates_by_chunk[chunk], target, chunk_id, per_vector)
        for rank, chosen in ranked:
            pairs.append(
                {
                    "doc_id": doc_id,
                    "chunk_id": chunk_id,
                    "template_id": chosen.template_id,
                    "similarity": chosen.similarity,
                    "vector_index": chosen.vector_index,
                    "n_tags": chosen.n_tags,
                    "rank": rank,
                }
            )
    similarities = [c.similarity for cs in candidates_by_chunk.values() for c in cs]
    return pairs, similarities
