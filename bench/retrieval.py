"""Template retrieval (stage B): queries/s and recall@10 of the LanceDB template index, every query
batch in one call, as matched_pairs sends a shard's chunk vectors:
- `numpy (exact)`: matrix products over all templates in memory, the yardstick of exact search;
- `LanceDB flat`: LanceDB's exact search without an index, which TemplateIndex.search once was
  (--flat-sizes only: at 10M it would take hours);
- `TemplateIndex.search, streamed`: exact, the table read block by block on every call and each
  block scored against the queries (torch, on --device): search on a table not resident;
- `TemplateIndex.search, resident`: exact, the table held in the device's memory between calls
  (fp16 scoring and float32 rescoring on a GPU, float32 on the CPU) and the queries streamed
  past it; its first call, which loads the table, is a row of its own;
- a --baseline copy of an earlier fi_resources/template_index.py, its search on the same table
  (the before of a change; 816d1d2 holds the streamed search before resident tables and
  float64 similarities);
- `IVF_HNSW_SQ`: LanceDB's approximate index (FACTS.md), built for --ann-sizes only (building it
  takes ~10 min at 1M on 2 cores).

Vectors are unit-length draws around 1,000 random centres (embeddings cluster by topic, and a
uniform cloud would make any index look worse than it is); queries come from the same mixture.
The table is written with Arrow, one 1M-row shard at a time, not through replace_shard (a
million rows a minute): search does not depend on how the rows were written.

    python -m bench.retrieval --sizes 100000 1000000                      # CPU sizes
    git show 816d1d2:fi_resources/template_index.py > /tmp/old_template_index.py
    python -m bench.retrieval --sizes 1000000 --queries 1000 --flat-sizes --ann-sizes \
        --baseline /tmp/old_template_index.py                             # CPU, before/after
    python -m bench.retrieval --device cuda --sizes 1000000 --queries 1000 --flat-sizes \
        --ann-sizes --baseline /tmp/old_template_index.py                 # a GPU, ~2 min
    python -m bench.retrieval --device cuda --sizes 10000000 --queries 1000 --flat-sizes \
        --ann-sizes --repeats 1 --baseline /tmp/old_template_index.py     # ~5 min, 20 GB RAM
"""

from __future__ import annotations

import tempfile
import time
from types import ModuleType

import numpy as np
import pyarrow as pa

from bench.common import interleaved, load_module, parser, report, table, timed
from fi_method.retrieval.template_search import ResidentTemplates, scoring_dtype, unit_rows
from fi_resources.embedder import torch_device

NAME = "templates__bench"
SHARD_ROWS = 1_000_000  # rows generated and written at once
# Query x template scores of the numpy yardstick computed at once: 1 GB of float32.
EXACT_SCORE_ELEMENTS = 1 << 28


def clustered_unit_vectors(count: int, dim: int, seed: int, centres: int = 1000) -> np.ndarray:
    """`count` unit vectors drawn around `centres` fixed random centres."""
    generator = np.random.default_rng(seed)
    middle = np.random.default_rng(12345).standard_normal((centres, dim)).astype(np.float32)
    picks = generator.integers(0, centres, count)
    vectors = middle[picks] + 0.6 * generator.standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top_k(templates: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of each query's k most similar templates, by matrix products over blocks of
    queries (the scores of all queries at once would not fit in memory at 10M templates)."""
    step = max(1, EXACT_SCORE_ELEMENTS // len(templates))
    found = []
    for start in range(0, len(queries), step):
        scores = queries[start : start + step] @ templates.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        found.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(found)


def recall(found: list[set[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(f & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def write_templates(folder: str, size: int, dim: int) -> tuple[np.ndarray, float]:
    """A table of `size` clustered templates in the schema TemplateIndex writes, one shard per
    SHARD_ROWS; returns the vectors and the seconds the writes took."""
    from fi_resources.template_index import TemplateIndex

    vectors = np.empty((size, dim), dtype=np.float32)
    written = TemplateIndex(uri=folder)._table(NAME, dim)
    seconds = 0.0
    for shard, start in enumerate(range(0, size, SHARD_ROWS)):
        rows = min(SHARD_ROWS, size - start)
        vectors[start : start + rows] = clustered_unit_vectors(rows, dim, seed=shard)
        data = pa.table(
            {
                "shard": pa.repeat(f"s{shard:03d}", rows),
                "template_id": pa.array(np.arange(start, start + rows).astype(str)),
                "query_id": pa.repeat("q", rows),
                "template": pa.repeat("t", rows),
                "compatible_document_description": pa.repeat("d", rows),
                "n_tags": pa.repeat(pa.scalar(1, pa.int32()), rows),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors[start : start + rows].ravel()), dim
                ),
            },
            schema=written.schema,
        )
        started = time.perf_counter()
        written.add(data)
        seconds += time.perf_counter() - started
    return vectors, seconds


def hits_by_query(hits: list[dict], queries: int) -> list[set[int]]:
    found: list[set[int]] = [set() for _ in range(queries)]
    for hit in hits:
        found[hit["query_index"]].add(int(hit["template_id"]))
    return found


def indexed_search(folder: str, queries: np.ndarray, k: int, nprobes: int):
    """Build LanceDB's IVF_HNSW_SQ index on the table; returns (build s, search s, hits)."""
    import lancedb

    from fi_resources.template_index import METRIC

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

    from fi_resources.template_index import METRIC

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


def measure(size: int, args, k: int, device: str, baseline: ModuleType | None) -> list[list]:
    """The rows of one index size, written to a LanceDB table."""
    from fi_resources.template_index import TemplateIndex

    queries = clustered_unit_vectors(args.queries, args.dim, seed=10_000)
    label = f"{size:,}"
    with tempfile.TemporaryDirectory() as folder:
        templates, written = write_templates(folder, size, args.dim)
        started = time.perf_counter()
        truth = exact_top_k(templates, queries, k)
        exact = time.perf_counter() - started
        del templates
        rows = [[label, "numpy (exact)", f"write {written:.0f} s", args.queries / exact, 1.0]]

        def row(search: str, setup: str, seconds: float, hits: list[dict]) -> list:
            found = hits_by_query(hits, args.queries)
            return [label, search, setup, args.queries / seconds, recall(found, truth)]

        if size in args.flat_sizes:
            rows.append(row("LanceDB flat", "-", *timed(lambda: lancedb_flat(folder, queries, k))))
        streamed = TemplateIndex(uri=folder, device=device, resident=False)
        resident = TemplateIndex(uri=folder, device=device, resident=True)
        first_call = timed(lambda: resident.search(NAME, queries, k))
        works = {"TemplateIndex.search, streamed": lambda: streamed.search(NAME, queries, k)}
        if baseline is not None:
            before = baseline.TemplateIndex(uri=folder, device=device)
            works[f"baseline {args.baseline.split('/')[-1]}"] = lambda: before.search(
                NAME, queries, k
            )
        works["TemplateIndex.search, resident"] = lambda: resident.search(NAME, queries, k)
        for search, (seconds, hits) in interleaved(works, args.repeats).items():
            rows.append(row(search, "-", seconds, hits))
        rows.append(row("TemplateIndex.search, resident, first call", "loads", *first_call))
        if size in args.ann_sizes:
            built, seconds, hits = indexed_search(folder, queries, k, args.nprobes)
            rows.append(
                row(f"IVF_HNSW_SQ, {args.nprobes} probes", f"build {built:.0f} s", seconds, hits)
            )
    return rows


def torch_top_k(templates, queries, k: int):
    """Row indices of each query's k most similar templates: float32 matrix products and topk
    in torch, a block of queries at a time, on the tensors' device."""
    import torch

    step = max(1, EXACT_SCORE_ELEMENTS // len(templates))
    return torch.cat(
        [
            (queries[start : start + step] @ templates.T).topk(k, dim=1).indices
            for start in range(0, len(queries), step)
        ]
    )


def measure_in_memory(size: int, args, k: int, device: str) -> list[list]:
    """The rows of one size held in the device's memory, with no table: ResidentTemplates.search
    (what a resident TemplateIndex table runs) against float32 products and topk in torch, whose
    results are the truth of the recall column."""
    import torch

    queries = torch.from_numpy(unit_rows(clustered_unit_vectors(args.queries, args.dim, 10_000)))
    queries = queries.to(device)
    vectors = torch.empty((size, args.dim), dtype=torch.float32, device=device)
    for shard, start in enumerate(range(0, size, SHARD_ROWS)):
        rows = min(SHARD_ROWS, size - start)
        block = clustered_unit_vectors(rows, args.dim, seed=shard)
        vectors[start : start + rows] = torch.from_numpy(block)
    resident = ResidentTemplates(
        0,
        vectors,
        pa.array(np.arange(size).astype(str)),
        pa.repeat(pa.scalar(1, pa.int32()), size),
        scoring_dtype(device),
    )
    truth = torch_top_k(vectors, queries, k).cpu().numpy()
    works = {
        "torch float32 matmul + topk (exact)": lambda: torch_top_k(vectors, queries, k),
        f"ResidentTemplates.search ({str(resident.scoring.dtype).removeprefix('torch.')})": (
            lambda: resident.search(queries, k)
        ),
    }
    label = f"{size:,} in memory"
    rows = []
    for search, (seconds, found) in interleaved(works, args.repeats).items():
        if isinstance(found, list):
            hits = hits_by_query(found, args.queries)
        else:
            hits = [set(row) for row in found.cpu().numpy().tolist()]
        rows.append([label, search, "-", args.queries / seconds, recall(hits, truth)])
    return rows


def main() -> None:
    arguments = parser(__doc__.split("\n\n")[0])
    arguments.add_argument(
        "--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="templates in a table"
    )
    arguments.add_argument(
        "--in-memory-sizes",
        type=int,
        nargs="*",
        default=[],
        help="templates generated in the device's memory, with no table (and no LanceDB)",
    )
    arguments.add_argument("--dim", type=int, default=384, help="MiniLM's width")
    arguments.add_argument("--queries", type=int, default=100, help="query vectors per call")
    arguments.add_argument("--nprobes", type=int, default=8)
    arguments.add_argument("--k", type=int, default=10, help="neighbours (matched_pairs asks 20)")
    arguments.add_argument("--ann-sizes", type=int, nargs="*", default=[100_000])
    arguments.add_argument(
        "--flat-sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="LanceDB flat"
    )
    arguments.add_argument("--baseline", help="an earlier template_index.py to compare with")
    args = arguments.parse_args()
    k = args.k
    device = torch_device(args.device)
    baseline = load_module(args.baseline, "baseline_template_index") if args.baseline else None
    rows = [row for size in args.sizes for row in measure(size, args, k, device, baseline)]
    rows += [
        row for size in args.in_memory_sizes for row in measure_in_memory(size, args, k, device)
    ]
    columns = ["templates", "search", "setup", "queries/s", f"recall@{k}"]
    report("retrieval", device, "Template retrieval", table(columns, rows), args.save)


if __name__ == "__main__":
    main()
