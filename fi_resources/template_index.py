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
        """The `limit` nearest templates of each query vector, in one batched call: rows of
        `query_index`, `template_id`, `n_tags` and cosine `similarity` (1 - cosine distance)."""
        database = lancedb.connect(self.uri)
        if not len(vectors) or not _has_table(database, name):
            return []
        hits = (
            database.open_table(name)
            .search(vectors)
            .distance_type(METRIC)
            .limit(limit)
            .select(["template_id", "n_tags", "_distance"])
            .to_arrow()
        )
        distances = hits["_distance"].to_numpy()
        return [
            {"query_index": q, "template_id": t, "n_tags": n, "similarity": float(1.0 - d)}
            for q, t, n, d in zip(
                hits["query_index"].to_pylist(),
                hits["template_id"].to_pylist(),
                hits["n_tags"].to_pylist(),
                distances,
                strict=True,
            )
        ]
