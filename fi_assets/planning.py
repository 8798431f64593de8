"""Which partitions `fi materialize` must run: those never materialized, and those whose upstream
data version changed since (the same content-hash DataVersions the UI's stale badges use), or
whose asset's code version was bumped."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    get_input_event_pointer_tag,
)


@dataclass
class PlannedRun:
    """One run: the assets of one partitions definition to materialize for one partition key."""

    partitions: str
    partition_key: str
    asset_keys: list[dg.AssetKey] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _latest(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> tuple[int, dict] | None:
    """(storage id, tags) of the latest materialization of one partition."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    )
    if not result.records:
        return None
    record = result.records[0]
    return record.storage_id, dict(record.asset_materialization.tags or {})


def _data_version_at(instance: dg.DagsterInstance, key: dg.AssetKey, storage_id: int) -> str | None:
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=[storage_id]), limit=1
    )
    if not result.records:
        return None
    return (result.records[0].asset_materialization.tags or {}).get(DATA_VERSION_TAG)


def plan_runs(
    defs: dg.Definitions, instance: dg.DagsterInstance, selection: list[str] | None
) -> list[PlannedRun]:
    """The runs that bring the selected assets (all when `selection` is empty) and their upstream
    up to date, in dependency order."""
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

    runs: dict[tuple[str, str], PlannedRun] = {}
    will_change: set[tuple[dg.AssetKey, str]] = set()
    for key in graph.toposorted_asset_keys:
        if key not in wanted:
            continue
        node = graph.get(key)
        partitions = node.partitions_def
        for partition in instance.get_dynamic_partitions(partitions.name):
            reason = _why_run(instance, graph, key, partition, will_change)
            if reason is None:
                continue
            will_change.add((key, partition))
            run = runs.setdefault(
                (partitions.name, partition), PlannedRun(partitions.name, partition)
            )
            run.asset_keys.append(key)
            run.reasons.append(f"{key.to_user_string()}: {reason}")
    return list(runs.values())


def _why_run(instance, graph, key, partition, will_change) -> str | None:
    latest = _latest(instance, key, partition)
    if latest is None:
        return "missing"
    tags = latest[1]
    node = graph.get(key)
    if node.code_version is not None and tags.get(CODE_VERSION_TAG) != node.code_version:
        return f"code version {tags.get(CODE_VERSION_TAG)} -> {node.code_version}"
    for parent in node.parent_keys:
        if (parent, partition) in will_change:
            return f"upstream {parent.to_user_string()} is re-materialized"
        parent_latest = _latest(instance, parent, partition)
        if parent_latest is None:
            continue
        # Dagster records which upstream event each materialization read; the partition is stale
        # when a newer upstream event carries a different content hash than the one it read.
        consumed = tags.get(get_input_event_pointer_tag(parent))
        if consumed is not None and int(consumed) == parent_latest[0]:
            continue
        read_version = _data_version_at(instance, parent, int(consumed)) if consumed else None
        if read_version != parent_latest[1].get(DATA_VERSION_TAG):
            return f"upstream {parent.to_user_string()} changed"
    return None
