"""Every asset is partitioned by the input shard it derives from. Shards are registered by
`fi ingest` or by the inbox sensor, one partition per ingested file or dataset."""

import dagster as dg

from fi_method.corpus.packing import RECIPES
from fi_method.evaluation.benchmarks import BENCHMARKS

query_shards = dg.DynamicPartitionsDefinition(name="query_shards")
doc_shards = dg.DynamicPartitionsDefinition(name="doc_shards")

# The recipes a packed corpus is built by (fi_method.corpus.packing): the paper's controlled
# comparison, same documents and token count, different recipe.
recipes = dg.StaticPartitionsDefinition(list(RECIPES))
DOC_SHARD, RECIPE = "doc_shard", "recipe"
doc_shard_recipes = dg.MultiPartitionsDefinition({DOC_SHARD: doc_shards, RECIPE: recipes})
# A multi-partitioned asset reading one dimension's partition of its parent (packed_corpus reads
# documents[shard]; trained_checkpoint[recipe] reads packed_corpus[every shard|recipe]).
by_doc_shard = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=DOC_SHARD)
by_recipe = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=RECIPE)
# Stage F: every recipe's model on every benchmark.
benchmarks = dg.StaticPartitionsDefinition(list(BENCHMARKS))
BENCHMARK = "benchmark"
recipe_benchmarks = dg.MultiPartitionsDefinition({RECIPE: recipes, BENCHMARK: benchmarks})


def partitions_label(partitions: dg.PartitionsDefinition | None) -> str:
    """How a partitions definition is named in `fi` output: doc_shards, recipe,
    doc_shard x recipe, or unpartitioned."""
    if partitions is None:
        return "unpartitioned"
    if isinstance(partitions, dg.MultiPartitionsDefinition):
        return " x ".join(dimension.name for dimension in partitions.partitions_defs)
    if partitions == recipes:
        return RECIPE
    if partitions == benchmarks:
        return BENCHMARK
    return partitions.name


def storage_partition(partition_key: str) -> str:
    """The file name of a partition: a multi-partition key `shard|recipe` as `shard.recipe`."""
    return partition_key.replace("|", ".")


def partition_keys(instance, partitions: dg.PartitionsDefinition | None) -> list[str | None]:
    """The keys of a partitions definition; an unpartitioned asset has the one key None."""
    if partitions is None:
        return [None]
    return list(partitions.get_partition_keys(dynamic_partitions_store=instance))


def keys_along(
    instance, multi: dg.MultiPartitionsDefinition, dimension_def: dg.PartitionsDefinition, key: str
) -> list[str]:
    """The keys of a multi-partitions definition whose dimension partitioned by `dimension_def`
    is `key` (packed_corpus keys of one doc shard, or of one recipe); none when it has no such
    dimension."""
    return keys_with(partition_keys(instance, multi), multi, dimension_def, key)


def keys_with(
    keys: list,
    multi: dg.MultiPartitionsDefinition,
    dimension_def: dg.PartitionsDefinition,
    key: str,
) -> list[str]:
    """Those of `keys` (keys of `multi`) whose dimension partitioned by `dimension_def` is
    `key`."""
    names = [d.name for d in multi.partitions_defs if d.partitions_def == dimension_def]
    return [
        partition for partition in keys if names and partition.keys_by_dimension[names[0]] == key
    ]
