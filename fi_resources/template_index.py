"""The LanceDB template index: one table per embedder model (vectors of different models never
mix), one row per template, tagged with the query shard it came from."""

from __future__ import annotations

import re

import lancedb
import numpy as np
import pyarrow as pa
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from fi_resources.storage import check_partition_name

# Vectors are L2-normalised, so cosine distance ranks exactly like the paper's cosine similarity.
METRIC = "cosine"
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
# Share of the GPU's free memory the resident templates (fp16 to score, float32 to rescore) and
# one block of scores may take; the rest is left to whatever else runs there.
RESIDENT_MEMORY_SHARE = 0.5
# Similarities are reported rounded to this many decimals.
SIMILARITY_DECIMALS = 6
# Candidate pairs rescored at once: 64k pairs of 1,024-wide rows are 512 MB per float64 copy.
RESCORED_PAIRS = 1 << 16


def table_name_for(embedder_model: str) -> str:
    """`templates__<model>`: a readable, filesystem-safe name per embedder."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", embedder_model.rstrip("/").split("/")[-1]).strip("_")
    return f"templates__{slug.lower()}"


def _schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("shard", pa.string()),
            pa.field("template_id", pa.string()),
            pa.field("query_id", pa.string()),
            pa.field("template", pa.string()),
            pa.field("compatible_document_description", pa.string()),
            pa.field("n_tags", pa.int32()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
        ],
        metadata={"metric": METRIC},
    )


def _has_table(database, name: str) -> bool:
    return name in database.list_tables().tables


class TemplateIndex(ConfigurableResource):
    """Writes and reads template vectors in LanceDB under FI_HOME/lancedb."""

    uri: str = Field(description="LanceDB folder (FI_HOME/lancedb)")
    device: str = Field("auto", description="torch device of the search's matrix products")
    resident: bool | None = Field(
        None,
        description="keep a table's vectors in the device's memory between searches; default: "
        "when the device is a GPU with room for them",
    )

    _resident_tables: dict = PrivateAttr(default_factory=dict)

    def _table(self, name: str, dimension: int):
        database = lancedb.connect(self.uri)
        if not _has_table(database, name):
            return database.create_table(name, schema=_schema(dimension))
        table = database.open_table(name)
        existing = table.schema.field("vector").type.list_size
        if existing != dimension:
            raise ValueError(
                f"LanceDB table {name} holds {existing}-d vectors, the embedder gives {dimension}-d: "
                "two models share a name; set FI_EMBEDDER_MODEL to a distinct id or path"
            )
        return table

    def replace_shard(self, name: str, shard: str, rows: list[dict], vectors: np.ndarray) -> int:
        """Make the table's rows of `shard` exactly `rows` in one commit (merge-insert on shard and
        template id, deleting the shard's rows not in `rows`): reruns are idempotent and a crash
        leaves the previous version whole. Vectors are stored scaled to unit length (see
        unit_rows), so that search's dot products are cosines. Returns the table's row count."""
        check_partition_name(shard)
        table = self._table(name, vectors.shape[1])
        shard_filter = f"shard = '{shard}'"
        if not rows:
            table.delete(shard_filter)
            return table.count_rows()
        data = pa.Table.from_pylist(
            [
                {**row, "shard": shard, "vector": vector}
                for row, vector in zip(rows, unit_rows(vectors).tolist())
            ],
            schema=table.schema,
        )
        (
            table.merge_insert(["shard", "template_id"])
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(shard_filter)
            .execute(data)
        )
        return table.count_rows()

    def shard_vectors(self, name: str, shard: str) -> dict[str, np.ndarray]:
        """The vectors already stored for a shard, by compatible document description: what a
        rerun of an edited shard reuses instead of embedding again."""
        database = lancedb.connect(self.uri)
        if not _has_table(database, name):
            return {}
        table = database.open_table(name)
        shard_filter = f"shard = '{check_partition_name(shard)}'"
        rows = table.count_rows(shard_filter)
        if not rows:
            return {}
        stored = (
            table.search()
            .where(shard_filter)
            .select(["compatible_document_description", "vector"])
            .limit(rows)
            .to_arrow()
        )
        return dict(
            zip(
                stored["compatible_document_description"].to_pylist(),
                np.asarray(stored["vector"].to_pylist(), dtype=np.float32),
                strict=True,
            )
        )

    def delete_shard(self, shard: str) -> int:
        """Remove a shard's rows from every embedder's table; returns how many were removed."""
        database = lancedb.connect(self.uri)
        shard_filter = f"shard = '{check_partition_name(shard)}'"
        removed = 0
        for name in database.list_tables().tables:
            if name.startswith("templates__"):
                table = database.open_table(name)
                removed += table.count_rows(shard_filter)
                table.delete(shard_filter)
        return removed

    def count(self, name: str, shard: str | None = None) -> int:
        database = lancedb.connect(self.uri)
        if not _has_table(database, name):
            return 0
        table = database.open_table(name)
        return table.count_rows(f"shard = '{check_partition_name(shard)}'" if shard else None)

    def search(self, name: str, vectors: np.ndarray, limit: int) -> list[dict]:
        """The `limit` nearest templates of each query vector by cosine similarity: rows of
        `query_index`, `template_id`, `n_tags` and `similarity`, each query's best first.

        Exact, like LanceDB's flat search, but many queries are scored against many templates in
        one matrix product (torch, on the GPU when `device` has one); LanceDB scores each query
        on its own, which is what made it slow (bench/retrieval.py). A resident table
        (`resident`) stays in memory on the device between calls, until the table's version
        changes, and the queries stream past it in blocks; otherwise the table streams past
        the queries block by block on every call, so memory stays bounded whatever its size.

        The matrix products (float32, or fp16 for a resident table on a GPU) only choose
        candidates, keeping every template within their rounding error of a query's cut-off.
        The candidates' similarities are then summed in float64 from the stored unit vectors and
        the query vectors scaled to unit length in float64, and rounded to 1e-6, so a pair gets
        the same similarity whatever the block shapes, the path or the device. Ties are common
        (templates with the same document description share a vector) and are broken by
        template id, so the result depends on the templates, not on the table's row order."""
        import torch

        from fi_resources.embedder import torch_device

        database = lancedb.connect(self.uri)
        if not len(vectors) or not _has_table(database, name):
            return []
        device = torch_device(self.device)
        queries = torch.from_numpy(unit_rows(vectors)).to(device)
        table = database.open_table(name)
        resident = self._resident_templates(name, table, device)
        if resident is not None:
            return resident.search(queries, limit)
        return _streamed_search(table, queries, limit)

    def _resident_templates(self, name: str, table, device: str) -> ResidentTemplates | None:
        """The table's vectors held on `device`, loaded again when the table's version has moved
        on; None when this index streams the table instead."""
        if name in self._resident_tables and self._resident_tables[name].version == table.version:
            return self._resident_tables[name]
        # The stale copy goes before the new one loads: both may not fit at once.
        self._resident_tables.pop(name, None)
        rows = table.count_rows()
        dimension = table.schema.field("vector").type.list_size
        keep = self.resident if self.resident is not None else _fits_on_gpu(device, rows, dimension)
        if not keep or not rows:
            return None
        loaded = ResidentTemplates.load(table, device, scoring_dtype=_scoring_dtype(device))
        self._resident_tables[name] = loaded
        return loaded


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length, computed in float64 so that the result is the same
    to the bit wherever it is computed; a zero row stays zero."""
    wide = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    return (wide / np.maximum(norms, 1e-12)).astype(np.float32)


def _scoring_dtype(device: str):
    """fp16 on a GPU, where its matrix products run on tensor cores; float32 elsewhere, where
    fp16 is no faster."""
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def _score_error(dtype, dimension: int) -> float:
    """A bound on how far a matrix product's cosine of two unit vectors is from the exact one,
    with float32 accumulation (TF32 off, PyTorch's default): 2^-24 per term summed, and for fp16
    2^-11 for rounding each vector, 2^-11 for rounding the result and up to 5 x 2^-11 for
    reductions split in fp16."""
    import torch

    accumulation = dimension * 2.0**-24
    return accumulation if dtype == torch.float32 else accumulation + 8 * 2.0**-11


def _exact_similarities(queries, query_index, templates, row):
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


def _fits_on_gpu(device: str, rows: int, dimension: int) -> bool:
    """Whether `rows` resident templates (fp16 and float32) and a block of scores with its mask
    fit in the device's share of free memory; always False off a GPU."""
    import torch

    if not device.startswith("cuda"):
        return False
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    needed = rows * dimension * (2 + 4) + GPU_SCORE_BLOCK_ELEMENTS * (2 + 1)
    return needed <= RESIDENT_MEMORY_SHARE * free


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
        self.margin = 2 * _score_error(dtype, vectors.shape[1])

    @classmethod
    def load(cls, table, device: str, scoring_dtype) -> ResidentTemplates:
        """Read every vector of `table` (an opened LanceDB table, so one version) onto
        `device`, scored in `scoring_dtype`."""
        import torch

        rows = table.count_rows()
        dimension = table.schema.field("vector").type.list_size
        vectors = torch.empty((rows, dimension), dtype=torch.float32, device=device)
        ids, tags, offset = [], [], 0
        for block in _blocks(table):
            vectors[offset : offset + block.num_rows] = torch.tensor(_block_vectors(block))
            ids.append(block.column("template_id"))
            tags.append(block.column("n_tags"))
            offset += block.num_rows
        if offset != rows:
            raise RuntimeError(f"read {offset} of the table's {rows} template vectors")
        return cls(
            table.version, vectors, pa.concat_arrays(ids), pa.concat_arrays(tags), scoring_dtype
        )

    def search(self, queries, limit: int) -> list[dict]:
        """TemplateIndex.search over these templates for unit query vectors (a float32 tensor
        on their device)."""
        rows = GPU_BLOCK_ROWS if self.vectors.device.type == "cuda" else SEARCH_BLOCK_ROWS
        blocks = (
            (start, self.scoring[start : start + rows], self.vectors[start : start + rows])
            for start in range(0, len(self.vectors), rows)
        )
        return _best_per_query(
            *_candidates(queries, blocks, limit, self.margin),
            self.template_ids,
            self.n_tags,
            limit,
        )


def _blocks(table):
    """The table's non-empty record batches of template id, tag count and vector."""
    batches = (
        table.search()
        .select(["template_id", "n_tags", "vector"])
        .limit(None)
        .to_batches(SEARCH_BLOCK_ROWS)
    )
    return (batch for batch in batches if batch.num_rows)


def _block_vectors(block) -> np.ndarray:
    """A record batch's vectors as a (rows, dimension) float32 array."""
    flat = block.column("vector").flatten().to_numpy()
    return flat.reshape(block.num_rows, -1)


def _streamed_search(table, queries, limit: int) -> list[dict]:
    """TemplateIndex.search reading the table block by block."""
    import torch

    ids, tags = [], []

    def blocks():
        offset = 0
        for block in _blocks(table):
            templates = torch.tensor(_block_vectors(block), device=queries.device)
            ids.append(block.column("template_id"))
            tags.append(block.column("n_tags"))
            yield offset, templates, templates
            offset += block.num_rows

    margin = 2 * _score_error(torch.float32, queries.shape[1])
    candidates = _candidates(queries, blocks(), limit, margin)
    if not ids:
        return []
    return _best_per_query(*candidates, pa.concat_arrays(ids), pa.concat_arrays(tags), limit)


def _candidates(queries, blocks, limit: int, margin: float):
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
            similarities = _exact_similarities(block, query_index, vectors, row)
            found["queries"].append(query_index.cpu().numpy() + start)
            found["rows"].append(row.cpu().numpy() + offset)
            found["approximate"].append(approximate[query_index, row].float().cpu().numpy())
            found["scores"].append(similarities.cpu().numpy())
        kept = {name: np.concatenate(parts) for name, parts in found.items()}
        # Earlier blocks' candidates that fell below a raised floor can go.
        still = kept["approximate"] >= floor.cpu().numpy()[kept["queries"]]
        kept = {name: values[still] for name, values in kept.items()}
    return kept["queries"], kept["rows"], kept["scores"]


def _best_per_query(
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
