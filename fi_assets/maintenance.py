"""Work on the data root outside a run: removing a shard with everything derived from it, and
proposing a similarity threshold for the configured embedder. The CLI's `remove` and `calibrate`
call these and print what they return."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
import polars as pl

from fi_assets.command import fi_command
from fi_assets.definitions import build_definitions, build_resources
from fi_assets.ingestion import PARTITIONS
from fi_assets.matching import chunk_vectors
from fi_assets.partitions import keys_along, storage_partition
from fi_method.ingest import Kind
from fi_method.retrieval.matching import propose_threshold
from fi_resources.instance import open_instance
from fi_resources.settings import Settings
from fi_resources.tables import BY_NAME, DOCUMENT_CHUNKS
from fi_resources.template_index import table_name_for


class UnknownShardError(LookupError):
    """A shard that is not registered."""


@dataclass(frozen=True)
class RemovedShard:
    files: int
    template_vectors: int


def remove_shard(settings: Settings, kind: Kind, shard: str) -> RemovedShard:
    """Remove a shard: its partition, every table partition and rejects derived from it (the
    packed corpus of every recipe included) and its templates in the LanceDB index."""
    instance = open_instance(settings.home)
    partitions = PARTITIONS[kind]
    if not instance.has_dynamic_partition(partitions.name, shard):
        raise UnknownShardError(f"no {kind} shard {shard!r}")
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    storage = defs.resources["storage"]
    files = storage.delete_rejects(f"ingest_{kind}", shard)
    for key in graph.get_all_asset_keys():
        table = BY_NAME.get(key.to_user_string())
        partitions_def = graph.get(key).partitions_def
        if table is None:
            continue
        if partitions_def == partitions:
            files += storage.delete_partition([table], shard)
        elif isinstance(partitions_def, dg.MultiPartitionsDefinition):
            # packed_corpus[shard|recipe]: every partition of the shard, whatever the recipe.
            for partition in keys_along(instance, partitions_def, partitions, shard):
                files += storage.delete_partition([table], storage_partition(partition))
    vectors = defs.resources["index"].delete_shard(shard) if kind == "queries" else 0
    instance.delete_dynamic_partition(partitions.name, shard)
    return RemovedShard(files, vectors)


@dataclass(frozen=True)
class ThresholdProposal:
    threshold: float
    vectors: int
    chunks: int
    # The best match of each sampled vector: p10, p50, p90 and max.
    quantiles: dict[str, float]


def propose_similarity_threshold(
    settings: Settings, vector_share: float, sample: int
) -> ThresholdProposal:
    """A similarity threshold under which `vector_share` of document vectors keep a candidate:
    the (1 - share) quantile of each vector's best template match, over up to `sample` chunks
    of the materialized document_chunks. Raises FileNotFoundError before any chunk exists and
    ValueError for a share outside (0, 1)."""
    resources = build_resources(settings)
    chunks = resources["storage"].read_all(DOCUMENT_CHUNKS)
    if chunks is None:
        raise FileNotFoundError(f"no document_chunks yet: run {fi_command()} materialize first")
    if chunks.height > sample:
        chunks = chunks.sample(sample, seed=0)
    vectors = chunk_vectors(chunks)
    hits = pl.DataFrame(
        resources["index"].search(table_name_for(settings.embedder_model), vectors, 1)
    )
    similarities = hits["similarity"] if hits.height else pl.Series("similarity", [], pl.Float64)
    threshold = propose_threshold(similarities.to_list(), vector_share)
    quantiles = {f"p{int(q * 100)}": similarities.quantile(q) for q in (0.1, 0.5, 0.9)}
    return ThresholdProposal(
        threshold, len(vectors), chunks.height, {**quantiles, "max": similarities.max()}
    )
