"""Template retrieval (stage B): queries/s and recall@10 of the LanceDB template index at 100k and
1M templates, every query batch in one call, as matched_pairs sends a shard's chunk vectors:
- `numpy (exact)`: one matrix product over all templates in memory, the yardstick of exact search;
- `LanceDB flat`: LanceDB's exact search without an index, which TemplateIndex.search was;
- `TemplateIndex.search`: what matched_pairs runs, exact, one matrix product per block of
  templates streamed from the table (torch, on --device);
- `IVF_HNSW_SQ`: LanceDB's approximate index (FACTS.md), built for --ann-sizes only (building it
  takes ~10 min at 1M on 2 cores).

Vectors are unit-length draws around 1,000 random centres (embeddings cluster by topic, and a
uniform cloud would make any index look worse than it is); queries come from the same mixture.

    python -m bench.retrieval --sizes 100000 1000000
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from bench.common import parser, report, table
from fi_resources.embedder import torch_device
from fi_resources.template_index import METRIC, TemplateIndex

NAME = "templates__bench"
SHARD_ROWS = 100_000  # one query shard's templates per write, as the pipeline writes them


def clustered_unit_vectors(count: int, dim: int, seed: int, centres: int = 1000) -> np.ndarray:
    generator = np.random.default_rng(seed)
    middle = np.random.default_rng(12345).standard_normal((centres, dim)).astype(np.float32)
    picks = generator.integers(0, centres, count)
    vectors = middle[picks] + 0.6 * generator.standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top_k(templates: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of each query's k most similar templates, by one matrix product per batch."""
    scores = queries @ templates.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def recall(found: list[set[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(f & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def load(index: TemplateIndex, vectors: np.ndarray) -> float:
    """Write the templates shard by shard through TemplateIndex; returns seconds."""
    started = time.perf_counter()
    for shard, start in enumerate(range(0, len(vectors), SHARD_ROWS)):
        part = vectors[start : start + SHARD_ROWS]
        rows = [
            {
                "template_id": str(start + i),
                "query_id": "q",
                "template": "t",
                "compatible_document_description": "d",
                "n_tags": 1,
            }
            for i in range(len(part))
        ]
        index.replace_shard(NAME, f"s{shard:03d}", rows, part)
    return time.perf_counter() - started


def hits_by_query(hits: list[dict], queries: int) -> list[set[int]]:
    found: list[set[int]] = [set() for _ in range(queries)]
    for hit in hits:
        found[hit["query_index"]].add(int(hit["template_id"]))
    return found


def indexed_search(folder: str, queries: np.ndarray, k: int, nprobes: int):
    """Build LanceDB's IVF_HNSW_SQ index on the table; returns (build s, search s, hits)."""
    import lancedb

    table_ = lancedb.connect(folder).open_table(NAME)
    started = time.perf_counter()
    table_.create_index(metric=METRIC, vector_column_name="vector", index_type="IVF_HNSW_SQ")
    built = time.perf_counter() - started

    def search():
        return (
            table_.search(queries)
            .distance_type(METRIC)
            .nprobes(nprobes)
            .limit(k)
            .select(["template_id"])
            .to_arrow()
        )

    search()  # the first call loads the index
    started = time.perf_counter()
    result = search()
    seconds = time.perf_counter() - started
    hits = [
        {"query_index": q, "template_id": t}
        for q, t in zip(
            result["query_index"].to_pylist(), result["template_id"].to_pylist(), strict=True
        )
    ]
    return built, seconds, hits


def lancedb_flat(folder: str, queries: np.ndarray, k: int) -> list[dict]:
    """LanceDB's own exact search, every query batch in one call."""
    import lancedb

    result = (
        lancedb.connect(folder)
        .open_table(NAME)
        .search(queries)
        .distance_type(METRIC)
        .limit(k)
        .select(["template_id"])
        .to_arrow()
    )
    return [
        {"query_index": q, "template_id": t}
        for q, t in zip(
            result["query_index"].to_pylist(), result["template_id"].to_pylist(), strict=True
        )
    ]


def timed(work):
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def measure(size: int, args, k: int, device: str) -> list[list]:
    """The rows of one index size: numpy, LanceDB flat, TemplateIndex.search, IVF_HNSW_SQ."""
    templates = clustered_unit_vectors(size, args.dim, seed=0)
    queries = clustered_unit_vectors(args.queries, args.dim, seed=1)
    started = time.perf_counter()
    truth = exact_top_k(templates, queries, k)
    exact = time.perf_counter() - started
    label = f"{size:,}"
    rows = [[label, "numpy (exact)", "-", args.queries / exact, 1.0]]
    with tempfile.TemporaryDirectory() as folder:
        index = TemplateIndex(uri=folder, device=device)
        loaded = load(index, templates)
        for search, setup, work in (
            (
                "LanceDB flat (before)",
                f"load {loaded:.0f} s",
                lambda: lancedb_flat(folder, queries, k),
            ),
            ("TemplateIndex.search (after)", "-", lambda: index.search(NAME, queries, k)),
        ):
            seconds, hits = timed(work)
            found = hits_by_query(hits, args.queries)
            rows.append([label, search, setup, args.queries / seconds, recall(found, truth)])
        if size in args.ann_sizes:
            built, seconds, hits = indexed_search(folder, queries, k, args.nprobes)
            rows.append(
                [
                    label,
                    f"IVF_HNSW_SQ, {args.nprobes} probes",
                    f"build {built:.0f} s",
                    args.queries / seconds,
                    recall(hits_by_query(hits, args.queries), truth),
                ]
            )
    return rows


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    arguments.add_argument("--dim", type=int, default=384, help="MiniLM's width")
    arguments.add_argument("--queries", type=int, default=100, help="query vectors per call")
    arguments.add_argument("--nprobes", type=int, default=8)
    arguments.add_argument("--k", type=int, default=10, help="neighbours (matched_pairs asks 20)")
    arguments.add_argument("--ann-sizes", type=int, nargs="*", default=[100_000])
    args = arguments.parse_args()
    k = args.k
    device = torch_device(args.device)
    rows = [row for size in args.sizes for row in measure(size, args, k, device)]
    columns = ["templates", "search", "setup", "queries/s", f"recall@{k}"]
    report("retrieval", device, "Template retrieval", table(columns, rows), args.save)


if __name__ == "__main__":
    main()
