"""Every table under FI_HOME/tables, declared once: its name, which is also the key of the asset
that writes it, and its columns with their types. Storage reads and writes tables only through
these declarations and refuses a frame whose columns differ from its table's, and assets build
their `deps` from the tables they read (`keys`), so a reader, a writer and the asset graph cannot
disagree on a name or a column."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    import dagster as dg

# A declared type is a polars type, or a polars type class where the shape is a setting (the
# vectors of a chunk: K+1 vectors of the embedder's dimension).
ColumnType = pl.DataType | type[pl.DataType]


class TableSchemaError(ValueError):
    """A frame that does not have the columns its table declares."""


@dataclass(frozen=True)
class Table:
    """One table: `name` is its folder under FI_HOME/tables, `schema` its columns, in order, with
    their types, and `written_by` the asset that writes it (by default the asset named `name`)."""

    name: str
    schema: Mapping[str, ColumnType]
    written_by: str | None = None

    @property
    def key(self) -> dg.AssetKey:
        """The key of the asset that writes this table."""
        # Imported here: `fi sql` reads the declarations without loading Dagster.
        import dagster as dg

        return dg.AssetKey(self.written_by or self.name)

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    def frame(self, rows: Iterable[dict]) -> pl.DataFrame:
        """`rows` as a frame of this table (missing fields are null)."""
        return pl.DataFrame(list(rows), schema=dict(self.schema))

    def check(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` when it has exactly this table's columns and types; raises TableSchemaError
        naming each difference otherwise."""
        problems = [f"missing column {name!r}" for name in self.schema if name not in frame.schema]
        problems += [
            f"undeclared column {name!r}" for name in frame.schema if name not in self.schema
        ]
        problems += [
            f"column {name!r} is {frame.schema[name]}, declared {declared}"
            for name, declared in self.schema.items()
            if name in frame.schema and frame.schema[name] != declared
        ]
        if problems:
            raise TableSchemaError(
                f"table {self.name}: {'; '.join(problems)} (declared in fi_resources/tables.py)"
            )
        return frame


def keys(*tables: Table) -> list[dg.AssetKey]:
    """The asset keys of `tables`: the `deps` of an asset that reads them."""
    return [table.key for table in tables]


_INGESTED = {"source": pl.String, "line": pl.Int64, "turn": pl.Int64}

INGESTED_QUERIES = Table("ingested_queries", {**_INGESTED, "text": pl.String})
INGESTED_DOCUMENTS = Table(
    "ingested_documents",
    {**_INGESTED, "source_id": pl.String, "url": pl.String, "text": pl.String},
)
RAW_QUERIES = Table(
    "raw_queries",
    {
        "query_id": pl.String,
        "query": pl.String,
        "n_words": pl.Int64,
        "source": pl.String,
        "line": pl.Int64,
        "turn": pl.Int64,
    },
)
INSTRUCTION_TEMPLATES = Table(
    "instruction_templates",
    {
        "template_id": pl.String,
        "query_id": pl.String,
        "query": pl.String,
        "template": pl.String,
        "compatible_document_description": pl.String,
        "n_tags": pl.Int64,
        "engine": pl.String,
        "model": pl.String,
    },
)
DOCUMENTS = Table(
    "documents",
    {
        "doc_id": pl.String,
        "source_id": pl.String,
        "url": pl.String,
        "source": pl.String,
        "line": pl.Int64,
        "language": pl.String,
        "language_score": pl.Float64,
        "n_chars": pl.Int64,
        "n_words": pl.Int64,
        "text": pl.String,
    },
)
DOCUMENT_CHUNKS = Table(
    "document_chunks",
    {
        "doc_id": pl.String,
        "chunk_id": pl.String,
        "position": pl.Int64,
        "text": pl.String,
        "n_tokens": pl.Int64,
        # Embedder.vectors_signature: which vectors a rerun may reuse rather than embed again.
        "embedded_with": pl.String,
        "vectors": pl.Array,
    },
)
MATCHED_PAIRS = Table(
    "matched_pairs",
    {
        "doc_id": pl.String,
        "chunk_id": pl.String,
        "template_id": pl.String,
        "similarity": pl.Float64,
        "vector_index": pl.Int64,
        "n_tags": pl.Int64,
        # 0: the template chosen for its vector; 1, 2, ...: the alternates tried, in this order,
        # when those before do not fit the passage.
        "rank": pl.Int64,
    },
)
INSTANTIATED_PAIRS = Table(
    "instantiated_pairs",
    {
        "pair_id": pl.String,
        "doc_id": pl.String,
        "chunk_id": pl.String,
        "template_id": pl.String,
        "query_id": pl.String,
        "similarity": pl.Float64,
        "instruction": pl.String,
        "answer": pl.String,
        "excerpt_ratio": pl.Float64,
        "engine": pl.String,
        "model": pl.String,
    },
)
JUDGED_PAIRS = Table(
    "judged_pairs",
    {
        "pair_id": pl.String,
        "score": pl.Int64,
        "feedback": pl.String,
        "kept": pl.Boolean,
        "engine": pl.String,
        "model": pl.String,
    },
)
CONTINUATIONS = Table(
    "continuations",
    {
        "continuation_id": pl.String,
        "doc_id": pl.String,
        "instruction": pl.String,
        "answer": pl.String,
        "variant": pl.String,
        "engine": pl.String,
        "model": pl.String,
    },
)
PACKED_CORPUS = Table(
    "packed_corpus",
    {
        "recipe": pl.String,
        "doc_shard": pl.String,
        "doc_id": pl.String,
        "sample_id": pl.String,
        "text": pl.String,
        "input_ids": pl.List(pl.Int32),
        "loss_mask": pl.List(pl.Int8),
        "n_tokens": pl.Int64,
        "doc_tokens": pl.Int64,
        "budget_tokens": pl.Int64,
    },
)
# Each answer of a model to a benchmark item, with its score: written beside eval_scores.
EVAL_GENERATIONS = Table(
    "eval_generations",
    {
        "recipe": pl.String,
        "benchmark": pl.String,
        "item_id": pl.String,
        "kind": pl.String,
        "task": pl.String,
        "question": pl.String,
        "response": pl.String,
        "score": pl.Float64,
        "judge": pl.String,
        "judge_output": pl.String,
    },
    written_by="eval_scores",
)
EVAL_SCORES = Table(
    "eval_scores",
    {
        "recipe": pl.String,
        "benchmark": pl.String,
        "metric": pl.String,
        "value": pl.Float64,
        "judge": pl.String,
        "n_items": pl.Int64,
        "note": pl.String,
    },
)
# Rows any stage turned away, one folder per stage (rejects/<stage>/<partition>.parquet), written
# beside the stage's own table: not an asset of its own.
REJECTS = Table(
    "rejects",
    {
        "stage": pl.String,
        "shard": pl.String,
        "source": pl.String,
        "line": pl.Int64,
        "item_id": pl.String,
        "reason": pl.String,
        "detail": pl.String,
    },
)

TABLES = (
    INGESTED_QUERIES,
    INGESTED_DOCUMENTS,
    RAW_QUERIES,
    INSTRUCTION_TEMPLATES,
    DOCUMENTS,
    DOCUMENT_CHUNKS,
    MATCHED_PAIRS,
    INSTANTIATED_PAIRS,
    JUDGED_PAIRS,
    CONTINUATIONS,
    PACKED_CORPUS,
    EVAL_GENERATIONS,
    EVAL_SCORES,
    REJECTS,
)
BY_NAME = {table.name: table for table in TABLES}
