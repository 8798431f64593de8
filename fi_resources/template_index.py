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
        table block by block so memory stays bounded whatever its size; a running top-k is kept
        across blocks. One product per block is what makes it fast: LanceDB scores each query on
        its own (bench/retrieval.py)."""
        import torch

        from fi_resources.embedder import torch_device

        database = lancedb.connect(self.uri)
        if not len(vectors) or not _has_table(database, name):
            return []
        device = torch_device(self.device)
        queries = torch.nn.functional.normalize(
            torch.as_tensor(vectors, dtype=torch.float32), dim=1
        )
        queries = queries.to(device)
        best_scores = torch.empty((len(queries), 0), device=device)
        best_rows = torch.empty((len(queries), 0), dtype=torch.long, device=device)
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
            templates = torch.from_numpy(flat.reshape(block.num_rows, -1)).to(device)
            scores = queries @ torch.nn.functional.normalize(templates, dim=1).T
            top_scores, top_rows = scores.topk(min(limit, block.num_rows), dim=1)
            best_scores, order = torch.cat([best_scores, top_scores], dim=1).topk(
                min(limit, best_scores.shape[1] + top_scores.shape[1]), dim=1
            )
            best_rows = torch.cat([best_rows, top_rows + offset], dim=1).gather(1, order)
            ids.append(block.column("template_id"))
            tags.append(block.column("n_tags"))
            offset += block.num_rows
        if not offset:
            return []
        rows = best_rows.cpu().numpy()
        template_ids = pa.concat_arrays(ids).take(pa.array(rows.ravel())).to_pylist()
        n_tags = pa.concat_arrays(tags).take(pa.array(rows.ravel())).to_pylist()
        similarities = best_scores.cpu().numpy().ravel()
        per_query = rows.shape[1]
        return [
            {
                "query_index": position // per_query,
                "template_id": template_id,
                "n_tags": n,
                "similarity": float(similarity),
            }
            for position, (template_id, n, similarity) in enumerate(
                zip(template_ids, n_tags, similarities, strict=True)
            )
        ]
