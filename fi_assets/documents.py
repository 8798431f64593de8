"""documents[d]: the cleaned documents every pair is grounded in."""

import dagster as dg
import polars as pl

from fi_assets.partitions import doc_shards
from fi_assets.reporting import write_stage
from fi_method.retrieval.documents import clean_documents
from fi_resources.storage import Storage

DOCUMENTS_SCHEMA = {
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
}


@dg.asset(
    partitions_def=doc_shards,
    deps=["ingested_documents"],
    group_name="documents",
    kinds={"polars", "parquet"},
    code_version="1",
    description="Cleaned documents of one shard: encoding and whitespace repaired, doc_id = content "
    "hash, language (langid) and length recorded; too-short and duplicate documents are in `rejects`.",
)
def documents(context: dg.AssetExecutionContext, storage: Storage) -> dg.MaterializeResult:
    ingested = storage.read_table("ingested_documents", context.partition_key)
    kept, rejects = clean_documents(ingested.to_dicts())
    frame = pl.DataFrame(kept, schema=DOCUMENTS_SCHEMA)
    languages = frame.group_by("language").len().sort("len", descending=True)
    return write_stage(
        storage,
        "documents",
        context.partition_key,
        frame,
        rejects,
        ["doc_id", "language", "n_words", "text"],
        {
            "ingested": ingested.height,
            "languages": dict(languages.iter_rows()),
            "words_total": int(frame["n_words"].sum() or 0),
        },
    )
