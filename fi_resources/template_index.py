"""The LanceDB template index: one table per embedder model (vectors of different models never
mix), one row per template, tagged with the query shard it came from."""

from __future__ import annotations

import re

import lancedb
import numpy as np
import pyarrow as pa
from dagster import ConfigurableResource
from pydantic import Field

from fi_resources.storage import check_partition_name

# Vectors are L2-normalised, so cosine distance ranks exactly like the paper's cosine similarity.
METRIC = "cosine"
# Templates scored per matrix product in a search: 64k x 384 floats is 100 MB per block.
SEARCH_BLOCK_ROWS = 65_536


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
        leaves the previous version whole. Returns the table's row count."""
        check_partition_name(shard)
        table = self._table(name, vectors.shape[1])
        shard_filter = f"shard = '{shard}'"
        if not rows:
            table.delete(shard_filter)
            return table.count_rows()
        data = pa.Table.from_pylist(
            [
                {**row, "shard": shard, "vector": vector}
                for row, vector in zip(rows, vectors.tolist())
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

        Exact, like LanceDB's flat search, but every query is scored against a block of
        templates in one matrix product (torch, on the GPU when `device` has one), streaming the
        table block by block so memory stays bounded whatever its size. LanceDB scores each
        query on its own, which is what made this slow (bench/retrieval.py).

        Ties are common (templates with the same document description share a vector) and are
        broken by template id, so the result depends on the templates, not on the table's row
        order or the block size. Similarities are rounded to 1e-6 first: the same vector pair
        can differ in its last bit between blocks of different shapes."""
        import torch

        from fi_resources.embedder import torch_device

        database = lancedb.connect(self.uri)
        if not len(vectors) or not _has_table(database, name):
            return []
        device = torch_device(self.device)
        queries = torch.nn.functional.normalize(torch.tensor(vectors, dtype=torch.float32), dim=1)
        queries = queries.to(device)
        # Per query, a lower bound of its limit-th best similarity so far: anything below it
        # can never make the cut; anything at or above it is kept, ties included.
        floor = torch.full((len(queries),), -float("inf"), device=device)
        kept_queries = kept_rows = np.zeros(0, dtype=np.int64)
        kept_scores = np.zeros(0, dtype=np.float32)
        ids, tags, offset = [], [], 0
        blocks = (
            database.open_table(name)
            .search()
            .select(["template_id", "n_tags", "vector"])
            .limit(None)
            .to_batches(SEARCH_BLOCK_ROWS)
        )
        for block in blocks:
            if not block.num_rows:
                continue
            flat = block.column("vector").flatten().to_numpy()
            templates = torch.tensor(flat.reshape(block.num_rows, -1), device=device)
            scores = queries @ torch.nn.functional.normalize(templates, dim=1).T
            scores = torch.round(scores, decimals=6)
            block_floor = scores.topk(min(limit, block.num_rows), dim=1).values[:, -1]
            if block.num_rows >= limit:
                floor = torch.maximum(floor, block_floor)
            query_index, row = (scores >= floor[:, None]).nonzero(as_tuple=True)
            kept_queries = np.concatenate([kept_queries, query_index.cpu().numpy()])
            kept_rows = np.concatenate([kept_rows, row.cpu().numpy() + offset])
            kept_scores = np.concatenate([kept_scores, scores[query_index, row].cpu().numpy()])
            # Earlier blocks' candidates that fell below the raised floor can go.
            still = kept_scores >= floor.cpu().numpy()[kept_queries]
            kept_queries, kept_rows, kept_scores = (
                kept_queries[still],
                kept_rows[still],
                kept_scores[still],
            )
            ids.append(block.column("template_id"))
            tags.append(block.column("n_tags"))
            offset += block.num_rows
        if not offset:
            return []
        return _best_per_query(
            kept_queries,
            kept_rows,
            kept_scores,
            pa.concat_arrays(ids),
            pa.concat_arrays(tags),
            limit,
        )


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
