"""documents[d]: the cleaned documents every pair is grounded in."""

import dagster as dg

from fi_assets.partitions import doc_shards
from fi_assets.reporting import write_stage
from fi_method.retrieval.documents import DOCUMENTS_VERSION, clean_documents
from fi_resources.storage import Storage
from fi_resources.tables import DOCUMENTS, INGESTED_DOCUMENTS, keys


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
    ingested = storage.read_table(INGESTED_DOCUMENTS, context.partition_key)
    kept, rejects = clean_documents(ingested.to_dicts())
    frame = DOCUMENTS.frame(kept)
    languages = frame.group_by("language").len().sort("len", descending=True)
    return write_stage(
        storage,
        DOCUMENTS,
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
