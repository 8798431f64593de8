"""documents[d]: the cleaned documents every pair is grounded in."""

from collections import Counter

import dagster as dg
import polars as pl

from fi_assets.partitions import doc_shards
from fi_assets.reporting import report_stage
from fi_method.retrieval.documents import DOCUMENTS_VERSION, clean_documents
from fi_resources.storage import Storage
from fi_resources.tables import DOCUMENTS, INGESTED_DOCUMENTS, keys

# Ingested rows cleaned and written per batch: memory follows the batch, not the partition.
CLEAN_BATCH_ROWS = 10_000


@dg.asset(
    partitions_def=doc_shards,
    deps=keys(INGESTED_DOCUMENTS),
    group_name="documents",
    kinds={"polars", "parquet"},
    code_version=DOCUMENTS_VERSION,
    description="Cleaned documents of one shard: encoding and whitespace repaired, doc_id = content "
    "hash, language (langid) and length recorded; too-short and duplicate documents are in `rejects`.",
)
def documents(context: dg.AssetExecutionContext, storage: Storage) -> dg.MaterializeResult:
    shard = context.partition_key
    ingested = storage.scan_table(INGESTED_DOCUMENTS, shard)
    n_ingested = ingested.select(pl.len()).collect().item()
    languages, words, seen = Counter(), 0, set()
    with (
        storage.table_writer(DOCUMENTS, shard) as written,
        storage.rejects_writer(DOCUMENTS.name, shard) as rejected,
    ):
        for start in range(0, n_ingested, CLEAN_BATCH_ROWS):
            rows = ingested.slice(start, CLEAN_BATCH_ROWS).collect().to_dicts()
            kept, rejects = clean_documents(rows, seen=seen)
            frame = DOCUMENTS.frame(kept)
            written.write(frame)
            rejected.add(rejects)
            languages.update(frame["language"].to_list())
            words += int(frame["n_words"].sum() or 0)
    return report_stage(
        written,
        rejected,
        shard,
        ["doc_id", "language", "n_words", "text"],
        {
            "ingested": n_ingested,
            # Most documents first (ties in the order first met).
            "languages": dict(languages.most_common()),
            "words_total": words,
        },
    )
