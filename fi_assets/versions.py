"""The tags that decide what is stale: Dagster's data and code versions, and the hash of the
partitions an asset read from a parent it reads whole. `fi materialize`'s plan (cli/planning.py)
and the UI's stale badges both follow them."""

from __future__ import annotations

import dagster as dg

from fi_method.text import content_hash

UPSTREAM_PARTITIONS_TAG = "fi/upstream_partitions."
# The tags Dagster writes on every materialization with its data and code versions (the asset
# versioning guide reads them by these names); spelled out here, as Dagster exports no public
# constant for them. tests/test_versions.py checks them against Dagster's own.
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"


def upstream_partitions_tags(
    instance: dg.DagsterInstance, parents: dict[str, str]
) -> dict[str, str]:
    """Tags an asset that reads every partition of its parents records: a hash of the parent
    partitions that existed, so that removing a shard makes it stale too (parents: asset name ->
    partitions definition name)."""
    return {
        UPSTREAM_PARTITIONS_TAG + asset: content_hash(
            *sorted(instance.get_dynamic_partitions(name))
        )
        for asset, name in parents.items()
    }
