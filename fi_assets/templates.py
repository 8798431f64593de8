"""instruction_templates[q] and template_index[q]: stage A's output and the vectors stage B
retrieves templates by."""

import dagster as dg
import numpy as np
import polars as pl

from fi_assets.partitions import query_shards
from fi_assets.placement import on_gpu
from fi_assets.reporting import (
    call_metadata,
    distribution_chart,
    each_partition,
    log_progress,
    preview_metadata,
    write_stage,
)
from fi_method.templating.instruction_templates import TEMPLATES_VERSION, collect_templates
from fi_resources.embedder import Embedder
from fi_resources.roles import Genericizer
from fi_resources.storage import Storage, frame_version
from fi_resources.tables import INSTRUCTION_TEMPLATES, RAW_QUERIES, keys
from fi_resources.template_index import METRIC, TemplateIndex, table_name_for

INDEX_COLUMNS = ["template_id", "query_id", "template", "compatible_document_description", "n_tags"]


@dg.asset(
    partitions_def=query_shards,
    deps=keys(RAW_QUERIES),
    group_name="queries",
    kinds={"polars", "parquet"},
    code_version=TEMPLATES_VERSION,
    **on_gpu(),
    description="Instruction templates of one query shard: the genericizer role (engine `rules`, "
    "`transformers` or `vllm`, chosen by FI_GENERICIZER_ENGINE) turns each query into a template "
    "with <fi>slot</fi> tags and a compatible document description. Outputs with unbalanced, "
    "nested or empty tags, no tag, or no change from the query are in `rejects`.",
)
def instruction_templates(
    context: dg.AssetExecutionContext, storage: Storage, genericizer: Genericizer
) -> dg.MaterializeResult:
    queries = storage.read_table(RAW_QUERIES, context.partition_key).to_dicts()
    context.log.info(f"genericizing {len(queries)} queries with {genericizer.label}")

    calls = genericizer.call(
        [{"query": q["query"]} for q in queries],
        progress=log_progress(context, "genericized"),
        caller=(context.run_id, context.partition_key),
    )
    kept, rejects = collect_templates(
        queries, calls.outputs, genericizer.engine, genericizer.model_name
    )
    frame = INSTRUCTION_TEMPLATES.frame(kept)
    tags = frame.group_by("n_tags").len().sort("n_tags")
    return write_stage(
        storage,
        INSTRUCTION_TEMPLATES,
        context.partition_key,
        frame,
        rejects,
        ["template", "compatible_document_description", "n_tags"],
        {
            "engine": genericizer.engine,
            "model": genericizer.model_name,
            "queries": len(queries),
            "valid_share": round(frame.height / len(queries), 4) if queries else 0.0,
            "n_tags_distribution": {str(k): v for k, v in tags.iter_rows()},
            "n_tags_chart": distribution_chart(
                frame["n_tags"].to_list(), "tags per template", True
            ),
            **call_metadata(calls),
        },
    )


@dg.asset(
    partitions_def=query_shards,
    deps=keys(INSTRUCTION_TEMPLATES),
    group_name="queries",
    kinds={"lancedb", "sentence_transformers"},
    code_version="1",
    **on_gpu(),
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="The compatible document descriptions of one shard's templates, embedded by the "
    "Embedder (FI_EMBEDDER_MODEL) and written to the LanceDB table of that embedder (cosine), "
    "rows tagged by shard; re-materializing replaces exactly this shard's rows.",
)
def template_index(
    context: dg.AssetExecutionContext, storage: Storage, embedder: Embedder, index: TemplateIndex
) -> dg.MaterializeResult:
    return each_partition(context, lambda shard: _index_shard(shard, storage, embedder, index))


def _index_shard(
    shard: str, storage: Storage, embedder: Embedder, index: TemplateIndex
) -> dg.MaterializeResult:
    templates = storage.read_table(INSTRUCTION_TEMPLATES, shard).select(INDEX_COLUMNS)
    table = table_name_for(embedder.model)
    descriptions = templates["compatible_document_description"].to_list()
    # An edited shard keeps most of its templates: embed only descriptions not stored yet.
    stored = index.shard_vectors(table, shard)
    missing = sorted({d for d in descriptions if d not in stored})
    stored.update(zip(missing, embedder.embed(missing), strict=True))
    vectors = (
        np.stack([stored[d] for d in descriptions])
        if descriptions
        else np.zeros((0, embedder.dimension), dtype=np.float32)
    )
    total = index.replace_shard(table, shard, templates.to_dicts(), vectors)
    return dg.MaterializeResult(
        metadata={
            "partition": shard,
            "dagster/row_count": templates.height,
            "lancedb_table": table,
            "lancedb_uri": dg.MetadataValue.path(index.uri),
            "table_rows_all_shards": total,
            "descriptions_embedded": len(missing),
            "embedder": embedder.model,
            "dimension": int(vectors.shape[1]),
            "metric": METRIC,
            **preview_metadata(templates, ["template_id", "compatible_document_description"]),
        },
        data_version=dg.DataVersion(
            frame_version(templates.with_columns(pl.lit(embedder.model).alias("embedder")))
        ),
    )
