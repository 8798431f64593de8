"""The LanceDB template index: one table per embedder model (vectors of different models never
mix), one row per template, tagged with the query shard it came from."""

from __future__ import annotations

import re

import lancedb
import numpy as np
import pyarrow as pa
from dagster import ConfigurableResource
from lancedb.index import HnswSq
from pydantic import Field, PrivateAttr

from fi_method.retrieval import template_search
from fi_method.retrieval.template_search import (
    APPROXIMATE_FROM,
    PAPER_NPROBES,
    ResidentTemplates,
    SearchKind,
    best_per_query,
    candidates,
    exact_similarities,
    score_error,
    scoring_dtype,
    unit_rows,
)
from fi_resources.storage import check_partition_name

# Vectors are L2-normalised, so cosine distance ranks exactly like the paper's cosine similarity.
METRIC = "cosine"
# Share of the GPU's free memory the resident templates (fp16 to score, float32 to rescore) and
# one block of scores may take; the rest is left to whatever else runs there.
RESIDENT_MEMORY_SHARE = 0.5
# The approximate search's index: IVF partitions, each an HNSW graph over the vectors quantised to
# 8 bits (HnswSq in LanceDB's index API), the one bench/retrieval.py measured.
INDEX_TYPE = "IVF_HNSW_SQ"
VECTOR_INDEX = "vector_idx"
# Tables smaller than this are searched exact even when approximate search is asked for: LanceDB
# trains the index's partitions and quantiser on samples of 256 vectors (HnswSq's sample_rate),
# more than such a table holds. lancedb 0.40 builds an index over it all the same, without an
# error, but the exact search over a few hundred templates costs nothing and is exact.
SMALLEST_INDEXED_TABLE = 256
# Candidates fetched from the index per result kept: the index ranks by 8-bit quantised vectors,
# which misorder templates near a query's cut-off, and templates sharing a vector reach it in
# whatever order the graph met them; twice as many, rescored exactly, let the exact similarities
# and template ids choose the last places. At 100k clustered templates on a 2-core CPU this took
# recall@10 from 0.950 to 0.999 for 957 -> 665 queries/s; widening the graph search instead
# (LanceDB's ef, 1.5 x limit by default, at 3x or 6x) reached 0.97.
INDEX_OVERFETCH = 2


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
    """Writes and reads template vectors in LanceDB under FI_HOME/lancedb, and searches them
    exactly or through an approximate vector index (`search_kind`)."""

    uri: str = Field(description="LanceDB folder (FI_HOME/lancedb)")
    device: str = Field("auto", description="torch device of the search's matrix products")
    resident: bool | None = Field(
        None,
        description="keep a table's vectors in the device's memory between searches; default: "
        "when the device is a GPU with room for them",
    )
    search_kind: SearchKind = Field(
        "auto",
        description="exact: matrix products over every template; approximate: LanceDB's "
        f"{INDEX_TYPE} index, built on the first search and brought up to date with rows "
        "written since, its candidates rescored exactly (its IVF training may differ between "
        "builds, so a rebuilt index may return other templates); auto: approximate from "
        "`approximate_from` templates on. Tables under "
        f"{SMALLEST_INDEXED_TABLE} templates are always searched exact.",
    )
    approximate_from: int = Field(
        APPROXIMATE_FROM, ge=1, description="Templates from which auto search is approximate."
    )
    nprobes: int = Field(
        PAPER_NPROBES,
        ge=1,
        description="IVF partitions the approximate search probes per query (the paper's nprobe).",
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

    def search_kind_for(self, name: str) -> str:
        """The search `search` runs on the table as it holds now: "exact", or "approximate
        (IVF_HNSW_SQ, <nprobes> probes)"; what the matching asset reports."""
        if self._indexed(self.count(name)):
            return f"approximate ({INDEX_TYPE}, {self.nprobes} probes)"
        return "exact"

    def _indexed(self, rows: int) -> bool:
        """Whether a table of `rows` templates is searched through the vector index."""
        if rows < SMALLEST_INDEXED_TABLE or self.search_kind == "exact":
            return False
        return self.search_kind == "approximate" or rows >= self.approximate_from

    def search(self, name: str, vectors: np.ndarray, limit: int) -> list[dict]:
        """The `limit` nearest templates of each query vector by cosine similarity: rows of
        `query_index`, `template_id`, `n_tags` and `similarity`, each query's best first.

        Approximate when `search_kind` says so (search_kind_for tells which a table gets): the
        table's IVF_HNSW_SQ index, built when missing and brought up to date with rows written
        since, gives each query INDEX_OVERFETCH x `limit` candidates at `nprobes` probes, which
        are rescored and ranked exactly as below; a pair found has the exact search's
        similarity, but a template the index misses is not found. The index's IVF training
        (k-means on a random sample) may differ between builds, so an index built again may
        find other templates. A table under
        SMALLEST_INDEXED_TABLE templates is searched exact in every mode, and silently: its
        result can only be better.

        Otherwise exact, like LanceDB's flat search, but many queries are scored against many
        templates in one matrix product (torch, on the GPU when `device` has one); LanceDB scores
        each query on its own, which is what made it slow (bench/retrieval.py). A resident table
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
        table = database.open_table(name)
        if self._indexed(table.count_rows()):
            return _indexed_search(table, unit_rows(vectors), limit, self.nprobes)
        device = torch_device(self.device)
        queries = torch.from_numpy(unit_rows(vectors)).to(device)
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
        loaded = load_resident(table, device)
        self._resident_tables[name] = loaded
        return loaded


def _fits_on_gpu(device: str, rows: int, dimension: int) -> bool:
    """Whether `rows` resident templates (fp16 and float32) and a block of scores with its mask
    fit in the device's share of free memory; always False off a GPU."""
    import torch

    if not device.startswith("cuda"):
        return False
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    needed = rows * dimension * (2 + 4) + template_search.GPU_SCORE_BLOCK_ELEMENTS * (2 + 1)
    return needed <= RESIDENT_MEMORY_SHARE * free


def load_resident(table, device: str, dtype=None) -> ResidentTemplates:
    """Every vector of `table` (an opened LanceDB table, so one version) on `device`, scored in
    `dtype` (default: the device's, fp16 on a GPU)."""
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
    return ResidentTemplates(
        table.version,
        vectors,
        pa.concat_arrays(ids),
        pa.concat_arrays(tags),
        dtype or scoring_dtype(device),
    )


def _blocks(table):
    """The table's non-empty record batches of template id, tag count and vector."""
    batches = (
        table.search()
        .select(["template_id", "n_tags", "vector"])
        .limit(None)
        .to_batches(template_search.SEARCH_BLOCK_ROWS)
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

    margin = 2 * score_error(torch.float32, queries.shape[1])
    found = candidates(queries, blocks(), limit, margin)
    if not ids:
        return []
    return best_per_query(*found, pa.concat_arrays(ids), pa.concat_arrays(tags), limit)


def _current_index(table) -> None:
    """Give the table a vector index over all its rows: built when it has none, and rows written
    since folded in by table.optimize(), which also compacts the table's files and removes
    versions older than a week. LanceDB searches rows outside the index flat, so none is missed
    meanwhile; folding them in keeps a large new shard from being scanned row by row."""
    stats = table.index_stats(VECTOR_INDEX)
    if stats is None:
        table.create_index("vector", config=HnswSq(distance_type=METRIC), name=VECTOR_INDEX)
    elif stats.num_unindexed_rows:
        table.optimize()


def _indexed_search(table, queries: np.ndarray, limit: int, nprobes: int) -> list[dict]:
    """TemplateIndex.search through the table's vector index, for unit float32 query vectors:
    every query in one LanceDB search, its candidates rescored in float64 and ranked like the
    exact search's."""
    import torch

    _current_index(table)
    found = (
        table.search(queries, vector_column_name="vector")
        .distance_type(METRIC)
        .nprobes(nprobes)
        .limit(INDEX_OVERFETCH * limit)
        # The distance is not used, but LanceDB warns when a search's columns leave it out.
        .select(["template_id", "n_tags", "vector", "_distance"])
        .to_arrow()
    )
    if not found.num_rows:
        return []
    # LanceDB numbers the queries only when it is given more than one.
    if "query_index" in found.column_names:
        query_index = found["query_index"].to_numpy().astype(np.int64)
    else:
        query_index = np.zeros(found.num_rows, dtype=np.int64)
    rows = np.arange(found.num_rows)
    vectors = found["vector"].combine_chunks().flatten().to_numpy().reshape(found.num_rows, -1)
    similarities = exact_similarities(
        torch.from_numpy(queries),
        torch.from_numpy(query_index),
        torch.tensor(vectors),
        torch.from_numpy(rows),
    )
    return best_per_query(
        query_index,
        rows,
        similarities.numpy(),
        found["template_id"].combine_chunks(),
        found["n_tags"].combine_chunks(),
        limit,
    )
