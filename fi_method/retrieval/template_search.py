"""Exact nearest-template search by cosine similarity, in matrix products: the arithmetic of
TemplateIndex.search (fi_resources/template_index.py), apart from where the vectors are read from.

Many queries are scored against many templates at once (torch, on whatever device the tensors are
on). The products (float32, or fp16 on a GPU) only choose candidates, keeping every template within
their rounding error of a query's cut-off; the candidates' similarities are then summed in float64
and rounded to 1e-6, so a pair gets the same similarity whatever the block shapes or the device.
Ties are broken by template id. The approximate search rescores the candidates of LanceDB's vector
index with the same functions (exact_similarities, best_per_query), so a pair it returns has the
exact search's similarity."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

# How TemplateIndex.search finds a query's nearest templates: exact (matrix products over every
# template), approximate (LanceDB's vector index, candidates rescored exactly), or auto: approximate
# from APPROXIMATE_FROM templates on.
SearchKind = Literal["exact", "approximate", "auto"]
# Templates from which auto search is approximate. On a 2-core CPU the exact search answers 727
# queries/s at 100k templates, about what the approximate search gives with its rescoring (665),
# but 57.7 at 1M, where LanceDB's index alone answers 1,478 (bench/README.md): below 1M, results
# stay exact and the same on every run, as an index's training does not promise.
APPROXIMATE_FROM = 1_000_000
# The paper's nprobe: it searched its 18M templates in FAISS probing 150 IVF partitions per query.
PAPER_NPROBES = 150

# Templates read from the table at a time, and scored per matrix product on the CPU: 64k x 384
# floats is 100 MB per block.
SEARCH_BLOCK_ROWS = 65_536
# Templates per matrix product of a table resident on a GPU: with ~1,000 queries at once
# (GPU_SCORE_BLOCK_ELEMENTS) the product is bound by arithmetic, not by reading the templates.
GPU_BLOCK_ROWS = 1 << 20
# Query x template scores computed at once: 2 GB of fp16 on a GPU, 256 MB of float32 on the
# CPU, where 1,024 queries against 64k templates keep each block of templates in cache.
GPU_SCORE_BLOCK_ELEMENTS = 1 << 30
CPU_SCORE_BLOCK_ELEMENTS = 1 << 26
# Similarities are reported rounded to this many decimals.
SIMILARITY_DECIMALS = 6
# Candidate pairs rescored at once: 64k pairs of 1,024-wide rows are 512 MB per float64 copy.
RESCORED_PAIRS = 1 << 16


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length, computed in float64 so that the result is the same
    to the bit wherever it is computed; a zero row stays zero."""
    wide = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    return (wide / np.maximum(norms, 1e-12)).astype(np.float32)


def scoring_dtype(device: str):
    """fp16 on a GPU, where its matrix products run on tensor cores; float32 elsewhere, where
    fp16 is no faster."""
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def score_error(dtype, dimension: int) -> float:
    """A bound on how far a matrix product's cosine of two unit vectors is from the exact one,
    with float32 accumulation (TF32 off, PyTorch's default): 2^-24 per term summed, and for fp16
    2^-11 for rounding each vector, 2^-11 for rounding the result and up to 5 x 2^-11 for
    reductions split in fp16."""
    import torch

    accumulation = dimension * 2.0**-24
    return accumulation if dtype == torch.float32 else accumulation + 8 * 2.0**-11


def exact_similarities(queries, query_index, templates, row):
    """Cosines of the pairs (queries[query_index[i]], templates[row[i]]) of unit float32 rows,
    rounded to 1e-6: summed in float64, where the order of the sum (which differs between
    devices) cannot move a result across a 1e-6 step as float32's can. A block of pairs at a
    time, so that memory stays bounded however many candidates there are."""
    import torch

    similarities = torch.empty(len(row), dtype=torch.float64, device=templates.device)
    for start in range(0, len(row), RESCORED_PAIRS):
        pairs = slice(start, start + RESCORED_PAIRS)
        left = queries[query_index[pairs]].to(torch.float64)
        right = templates[row[pairs]].to(torch.float64)
        similarities[pairs] = (left * right).sum(dim=1)
    return torch.round(similarities, decimals=SIMILARITY_DECIMALS)


class ResidentTemplates:
    """One version of a table's template vectors held on a device: the stored unit float32
    vectors with their ids and tag counts, and the copy that queries are scored against to
    choose candidates: fp16 on a GPU, the float32 vectors themselves elsewhere."""

    def __init__(self, version: int, vectors, template_ids: pa.Array, n_tags: pa.Array, dtype):
        import torch

        self.version = version
        self.vectors = vectors
        self.template_ids = template_ids
        self.n_tags = n_tags
        self.scoring = vectors if dtype == torch.float32 else vectors.to(dtype)
        # A template that belongs in a query's best scores at least the approximate cut-off
        # less twice the approximation's error.
        self.margin = 2 * score_error(dtype, vectors.shape[1])

    def search(self, queries, limit: int) -> list[dict]:
        """TemplateIndex.search over these templates for unit query vectors (a float32 tensor
        on their device)."""
        rows = GPU_BLOCK_ROWS if self.vectors.device.type == "cuda" else SEARCH_BLOCK_ROWS
        blocks = (
            (start, self.scoring[start : start + rows], self.vectors[start : start + rows])
            for start in range(0, len(self.vectors), rows)
        )
        return best_per_query(
            *candidates(queries, blocks, limit, self.margin),
            self.template_ids,
            self.n_tags,
            limit,
        )


def candidates(queries, blocks, limit: int, margin: float):
    """(query, row, similarity) of every template that may be among a query's `limit` best,
    ties included, from blocks of (first row, vectors to score, float32 vectors) of templates;
    each block is scored against the queries a block of queries at a time.

    A block's approximate scores (the product of the queries and the vectors to score) choose
    candidates, whose exact similarities come from the float32 vectors. Per query, the floor is
    the highest limit-th best approximate score of a block so far less `margin` (twice the
    approximation's error): a template scoring below it has `limit` better ones."""
    import torch

    device = queries.device
    budget = GPU_SCORE_BLOCK_ELEMENTS if device.type == "cuda" else CPU_SCORE_BLOCK_ELEMENTS
    floor = torch.full((len(queries),), -float("inf"), device=device)
    kept = {
        "queries": np.zeros(0, dtype=np.int64),
        "rows": np.zeros(0, dtype=np.int64),
        "approximate": np.zeros(0, dtype=np.float32),
        "scores": np.zeros(0, dtype=np.float64),
    }
    for offset, scoring, vectors in blocks:
        found = {name: [part] for name, part in kept.items()}
        step = max(1, budget // len(scoring))
        for start in range(0, len(queries), step):
            block = queries[start : start + step]
            approximate = block.to(scoring.dtype) @ scoring.T
            block_floor = floor[start : start + step]
            if len(scoring) >= limit:
                best = approximate.topk(limit, dim=1).values[:, -1].float() - margin
                torch.maximum(block_floor, best, out=block_floor)
            query_index, row = (approximate >= block_floor[:, None]).nonzero(as_tuple=True)
            similarities = exact_similarities(block, query_index, vectors, row)
            found["queries"].append(query_index.cpu().numpy() + start)
            found["rows"].append(row.cpu().numpy() + offset)
            found["approximate"].append(approximate[query_index, row].float().cpu().numpy())
            found["scores"].append(similarities.cpu().numpy())
        kept = {name: np.concatenate(parts) for name, parts in found.items()}
        # Earlier blocks' candidates that fell below a raised floor can go.
        still = kept["approximate"] >= floor.cpu().numpy()[kept["queries"]]
        kept = {name: values[still] for name, values in kept.items()}
    return kept["queries"], kept["rows"], kept["scores"]


def best_per_query(
    queries: np.ndarray,
    rows: np.ndarray,
    scores: np.ndarray,
    template_ids: pa.Array,
    n_tags: pa.Array,
    limit: int,
) -> list[dict]:
    """From candidate (query, row, score) triples, each query's `limit` best by similarity, then
    template id; in query order, best first."""
    candidate_ids = np.asarray(template_ids.take(pa.array(rows)).to_pylist())
    order = np.lexsort((candidate_ids, -scores, queries))
    queries, rows, scores = queries[order], rows[order], scores[order]
    candidate_ids = candidate_ids[order]
    # Position of each candidate within its query's run: keep the first `limit`.
    starts = np.searchsorted(queries, queries, side="left")
    keep = np.arange(len(queries)) - starts < limit
    candidate_tags = n_tags.take(pa.array(rows[keep])).to_pylist()
    return [
        {"query_index": int(q), "template_id": str(t), "n_tags": n, "similarity": float(s)}
        for q, t, n, s in zip(
            queries[keep], candidate_ids[keep], candidate_tags, scores[keep], strict=True
        )
    ]
