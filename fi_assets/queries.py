"""raw_queries[q]: the user queries that become templates."""

import dagster as dg

from fi_assets.partitions import query_shards
from fi_assets.reporting import write_stage
from fi_method.corpus.decontamination import default_index
from fi_method.templating import queries as stage
from fi_resources.storage import Storage
from fi_resources.tables import INGESTED_QUERIES, RAW_QUERIES, keys


class QueryFilterConfig(dg.Config):
    """Filters of stage A; defaults are documented in fi_method.templating.queries."""

    min_words: int = stage.MIN_QUERY_WORDS
    max_chars: int = stage.MAX_QUERY_CHARS
    near_duplicate_jaccard: float = stage.NEAR_DUPLICATE_JACCARD


@dg.asset(
    partitions_def=query_shards,
    deps=keys(INGESTED_QUERIES),
    group_name="queries",
    kinds={"polars", "parquet"},
    code_version=stage.QUERIES_VERSION,
    description="Normalised user queries of one shard: encoding and whitespace repaired, length "
    "bounds, exact and near-duplicate removal (MinHash), decontamination against MixEval, "
    "MT-Bench, MT-Bench-101 and AlpacaEval (8-gram overlap, the Tulu 3 procedure). query_id is a "
    "content hash. Removals are in `rejects` with their reason.",
)
def raw_queries(
    context: dg.AssetExecutionContext, config: QueryFilterConfig, storage: Storage
) -> dg.MaterializeResult:
    ingested = storage.read_table(INGESTED_QUERIES, context.partition_key)
    filters = stage.QueryFilters(config.min_words, config.max_chars, config.near_duplicate_jaccard)
    kept, rejects = stage.filter_queries(ingested.to_dicts(), default_index().match, filters)
    frame = RAW_QUERIES.frame(kept)
    context.log.info(f"{len(kept)} of {ingested.height} queries kept, {len(rejects)} removed")
    return write_stage(
        storage,
        RAW_QUERIES,
        context.partition_key,
        frame,
        rejects,
        ["query_id", "query"],
        {"ingested": ingested.height},
    )
