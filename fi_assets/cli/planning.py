"""Which partitions `fi materialize` must run: those never materialized, those whose asset's code
version changed, and those whose upstream changed since they were built (a newer upstream
materialization whose content hash, its DataVersion, differs from the one they read). The same
content-hash DataVersions drive the UI's stale badges."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from fi_assets.checks import FAILED_CHECKS_TAG
from fi_assets.partitions import keys_along, partition_keys, partitions_label
from fi_assets.versions import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    UPSTREAM_PARTITIONS_TAG,
)
from fi_method.text import content_hash


@dataclass
class PlannedRun:
    """One run: the assets of one partitions definition to materialize for one partition key."""

    partitions: str
    partition_key: str | None
    asset_keys: list[dg.AssetKey] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    # Indices of the earlier runs this one reads from: when one fails, this one must not run.
    reads_from: set[int] = field(default_factory=set)


def _latest(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str, before: int | None = None
) -> tuple[int, dict[str, str]] | None:
    """(storage id, tags) of the latest materialization of one partition, optionally the latest
    before a storage id."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=key,
            asset_partitions=None if partition is None else [partition],
            before_storage_id=before,
        ),
        limit=1,
    )
    if not result.records:
        return None
    record = result.records[0]
    return record.storage_id, dict(record.asset_materialization.tags or {})


def _parent_partitions(instance, graph, key, parent, partition) -> list[str]:
    """The parent partitions one partition reads: the same key; its own dimension of a
    multi-partition key (packed_corpus[shard|recipe] reads documents[shard]); the partitions of a
    multi-partitioned parent that share its key; or all of them when
    the parent is partitioned by another dimension (matched_pairs[doc] reads every template
    shard)."""
    parent_partitions = graph.get(parent).partitions_def
    own = graph.get(key).partitions_def
    if parent_partitions == own:
        return [partition]
    if isinstance(own, dg.MultiPartitionsDefinition):
        for dimension in own.partitions_defs:
            if dimension.partitions_def == parent_partitions:
                return [own.get_partition_key_from_str(partition).keys_by_dimension[dimension.name]]
    if isinstance(parent_partitions, dg.MultiPartitionsDefinition) and any(
        dimension.partitions_def == own for dimension in parent_partitions.partitions_defs
    ):
        # trained_checkpoint[recipe] reads packed_corpus[every shard|recipe].
        return keys_along(instance, parent_partitions, own, partition)
    return partition_keys(instance, parent_partitions)


def plan_runs(
    defs: dg.Definitions, instance: dg.DagsterInstance, selection: list[str] | None
) -> list[PlannedRun]:
    """The runs that bring the selected assets (all when `selection` is empty) and their upstream
    up to date, in an order where every run comes after the runs it reads from."""
    graph = defs.resolve_asset_graph()
    materializable = {key for key in graph.get_all_asset_keys() if graph.get(key).is_materializable}
    if selection:
        unknown = sorted(set(selection) - {key.to_user_string() for key in materializable})
        if unknown:
            names = ", ".join(sorted(k.to_user_string() for k in materializable))
            raise ValueError(f"unknown asset(s): {', '.join(unknown)}; known: {names}")
        wanted = dg.AssetSelection.assets(*selection).upstream().resolve(graph) & materializable
    else:
        wanted = materializable

    runs: list[PlannedRun] = []
    open_run: dict[tuple[str, str], int] = {}
    run_of: dict[tuple[dg.AssetKey, str], int] = {}
    for key in graph.toposorted_asset_keys:
        if key not in wanted:
            continue
        partitions = graph.get(key).partitions_def
        label = partitions_label(partitions)
        for partition in partition_keys(instance, partitions):
            reason, after = _why_run(instance, graph, key, partition, run_of)
            if reason is None:
                continue
            group = (label, partition)
            if group not in open_run or open_run[group] < max(after, default=-1):
                runs.append(PlannedRun(label, partition))
                open_run[group] = len(runs) - 1
            run = runs[open_run[group]]
            run_of[(key, partition)] = open_run[group]
            run.asset_keys.append(key)
            run.reasons.append(f"{key.to_user_string()}: {reason}")
            run.reads_from |= after - {open_run[group]}
    return runs


def _why_run(instance, graph, key, partition, run_of) -> tuple[str | None, set[int]]:
    """Why this partition must run (None when it is up to date), and the indices of the planned
    runs it reads from (it must follow them)."""
    after: set[int] = set()
    reason = None
    latest = _latest(instance, key, partition)
    node = graph.get(key)
    if latest is None:
        reason = "missing"
    elif node.code_version is not None and latest[1].get(CODE_VERSION_TAG) != node.code_version:
        reason = f"code version {latest[1].get(CODE_VERSION_TAG)} -> {node.code_version}"
    elif latest[1].get(FAILED_CHECKS_TAG):
        reason = f"its blocking check(s) {latest[1][FAILED_CHECKS_TAG]} failed last time"
    for parent in node.parent_keys:
        parent_partitions = _parent_partitions(instance, graph, key, parent, partition)
        recorded = (
            latest[1].get(UPSTREAM_PARTITIONS_TAG + parent.to_user_string()) if latest else None
        )
        if (
            reason is None
            and recorded is not None
            and recorded != content_hash(*sorted(parent_partitions))
        ):
            reason = f"partitions of upstream {parent.to_user_string()} added or removed"
        for parent_partition in parent_partitions:
            if (parent, parent_partition) in run_of:
                after.add(run_of[(parent, parent_partition)])
                reason = reason or f"upstream {parent.to_user_string()} is re-materialized"
                continue
            if reason is not None or latest is None:
                continue
            current = _latest(instance, parent, parent_partition)
            if current is None or current[0] < latest[0]:
                continue
            read = _latest(instance, parent, parent_partition, before=latest[0])
            if read is None or read[1].get(DATA_VERSION_TAG) != current[1].get(DATA_VERSION_TAG):
                reason = f"upstream {parent.to_user_string()}[{parent_partition}] changed"
    return reason, after
