"""Which partitions `fi materialize` must run: those never materialized, those whose asset's code
version changed, and those whose upstream changed since they were built (a newer upstream
materialization whose content hash, its DataVersion, differs from the one they read). The same
content-hash DataVersions drive the UI's stale badges. `fi materialize` runs them in waves: the
runs that read from no other planned run, then a fresh plan, so that a run whose upstream ran
again but wrote the same data is found up to date and not run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from fi_assets.checks import FAILED_CHECKS_TAG
from fi_assets.partitions import keys_with, partition_keys, partitions_label
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


# Materialization records one instance query fetches.
RECORDS_PER_QUERY = 500


class _PlanState:
    """What one plan reads from the instance, each read once: the dynamic partitions of each
    definition, the keys of each partitions definition, and the latest materialization of every partition of an asset, read per asset,
    newest first, RECORDS_PER_QUERY records a query, rather than one to three queries per
    partition and parent: a plan over thousands of shards makes about as many instance queries
    as one over ten. Nothing is written during a plan, so what was read stays true for it."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self._keys: dict[int, list] = {}
        self._by_partition: dict[dg.AssetKey, dict[str, tuple[int, dict[str, str]]]] = {}
        self._unpartitioned: dict[dg.AssetKey, tuple[int, dict[str, str]] | None] = {}

    def keys(self, partitions: dg.PartitionsDefinition | None) -> list:
        """The keys of a partitions definition (its dynamic partitions read once per plan)."""
        if id(partitions) not in self._keys:
            self._keys[id(partitions)] = partition_keys(self.instance, partitions)
        return self._keys[id(partitions)]

    def latest(self, key: dg.AssetKey, partition: str | None) -> tuple[int, dict[str, str]] | None:
        """(storage id, tags) of the latest materialization of one partition, as `_latest`."""
        if partition is None:
            if key not in self._unpartitioned:
                self._unpartitioned[key] = _latest(self.instance, key, None)
            return self._unpartitioned[key]
        if key not in self._by_partition:
            self._by_partition[key] = self._load(key)
        return self._by_partition[key].get(partition)

    def _load(self, key: dg.AssetKey) -> dict[str, tuple[int, dict[str, str]]]:
        found: dict[str, tuple[int, dict[str, str]]] = {}
        cursor = None
        while True:
            result = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key),
                limit=RECORDS_PER_QUERY,
                cursor=cursor,
                ascending=False,
            )
            for record in result.records:
                event = record.asset_materialization
                if event.partition is not None and event.partition not in found:
                    found[event.partition] = (record.storage_id, dict(event.tags or {}))
            if not result.has_more:
                return found
            cursor = result.cursor


def _parent_partitions(state: _PlanState, graph, key, parent, partition) -> list[str]:
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
        return keys_with(state.keys(parent_partitions), parent_partitions, own, partition)
    return state.keys(parent_partitions)


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

    state = _PlanState(instance)
    runs: list[PlannedRun] = []
    open_run: dict[tuple[str, str], int] = {}
    run_of: dict[tuple[dg.AssetKey, str], int] = {}
    for key in graph.toposorted_asset_keys:
        if key not in wanted:
            continue
        partitions = graph.get(key).partitions_def
        label = partitions_label(partitions)
        for partition in state.keys(partitions):
            reason, after = _why_run(state, graph, key, partition, run_of)
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


def _why_run(state: _PlanState, graph, key, partition, run_of) -> tuple[str | None, set[int]]:
    """Why this partition must run (None when it is up to date), and the indices of the planned
    runs it reads from (it must follow them)."""
    after: set[int] = set()
    reason = None
    latest = state.latest(key, partition)
    node = graph.get(key)
    if latest is None:
        reason = "missing"
    elif node.code_version is not None and latest[1].get(CODE_VERSION_TAG) != node.code_version:
        reason = f"code version {latest[1].get(CODE_VERSION_TAG)} -> {node.code_version}"
    elif latest[1].get(FAILED_CHECKS_TAG):
        reason = f"its blocking check(s) {latest[1][FAILED_CHECKS_TAG]} failed last time"
    for parent in node.parent_keys:
        parent_partitions = _parent_partitions(state, graph, key, parent, partition)
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
            current = state.latest(parent, parent_partition)
            if current is None or current[0] < latest[0]:
                continue
            # Rare (the parent was materialized since): one query for this partition alone.
            read = _latest(state.instance, parent, parent_partition, before=latest[0])
            if read is None or read[1].get(DATA_VERSION_TAG) != current[1].get(DATA_VERSION_TAG):
                where = "" if parent_partition is None else f"[{parent_partition}]"
                reason = f"upstream {parent.to_user_string()}{where} changed"
    return reason, after


@dataclass
class Wave:
    """The runs of one wave: those of a fresh plan that read from no other planned run."""

    number: int
    runs: list[PlannedRun]
    # Running number (1-based, counted over all waves) of its first run.
    first: int
    # Runs still planned when it starts, its own included: they end numbered up to
    # first - 1 + planned unless some are found up to date later.
    planned: int


@dataclass
class WavesOutcome:
    """What the waves of one `fi materialize` did."""

    waves: int = 0
    ran: int = 0
    # Running numbers of the runs that failed.
    failed: list[int] = field(default_factory=list)
    # Planned runs left at the end because they read from failed runs: each with the running
    # numbers of those failed runs.
    skipped: list[tuple[PlannedRun, list[int]]] = field(default_factory=list)
    # Runs of a plan that waited for the runs they read from, and were then up to date: those
    # runs wrote the data they had read already.
    up_to_date: list[PlannedRun] = field(default_factory=list)
    # "asset: why [partition]" of each asset partition planned again after it ran here:
    # something it reads changed meanwhile (a shard registered during the run); the waves stop
    # rather than run it twice.
    stale_again: list[str] = field(default_factory=list)


def _asset_partitions(run: PlannedRun) -> set[tuple[dg.AssetKey, str | None]]:
    return {(key, run.partition_key) for key in run.asset_keys}


def materialize_in_waves(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: list[str] | None,
    execute: Callable[[Wave], set[int]],
) -> WavesOutcome:
    """Plan, `execute` the wave of planned runs that read from no other planned run (it returns
    the indices of the wave's runs that failed), plan again with the data versions those runs
    wrote, and repeat until nothing is left to run. An asset partition runs at most once: one that
    failed is not retried, and the runs that read from it are left (`skipped`)."""
    outcome = WavesOutcome()
    # Asset partitions run here: the running number of the run, and whether it succeeded.
    attempted: dict[tuple[dg.AssetKey, str | None], tuple[int, bool]] = {}
    waiting: list[PlannedRun] = []
    while True:
        runs = plan_runs(defs, instance, selection)
        still_planned = set().union(*map(_asset_partitions, runs))
        outcome.up_to_date += [r for r in waiting if not _asset_partitions(r) & still_planned]
        # Plan index -> running numbers of the failed runs it is or reads from. Plan order puts
        # every run after the runs it reads from.
        blocked: dict[int, set[int]] = {}
        for index, run in enumerate(runs):
            failed = {
                attempted[pair][0]
                for pair in _asset_partitions(run)
                if pair in attempted and not attempted[pair][1]
            }
            for earlier in run.reads_from:
                failed |= blocked.get(earlier, set())
            if failed:
                blocked[index] = failed
        # A failed partition planned again is reported once, as the failure it is.
        retries = {i for i in blocked if _asset_partitions(runs[i]) <= attempted.keys()}
        outcome.skipped = [
            (runs[i], sorted(numbers)) for i, numbers in blocked.items() if i not in retries
        ]
        ready = [i for i, run in enumerate(runs) if not run.reads_from and i not in blocked]
        outcome.stale_again = [
            f"{reason} [{runs[i].partition_key}]"
            for i in ready
            for key, reason in zip(runs[i].asset_keys, runs[i].reasons, strict=True)
            if (key, runs[i].partition_key) in attempted
        ]
        if not ready or outcome.stale_again:
            return outcome
        outcome.waves += 1
        wave = Wave(
            outcome.waves, [runs[i] for i in ready], outcome.ran + 1, len(runs) - len(retries)
        )
        failed_in_wave = execute(wave)
        for offset, run in enumerate(wave.runs):
            number = wave.first + offset
            if offset in failed_in_wave:
                outcome.failed.append(number)
            for pair in _asset_partitions(run):
                attempted[pair] = (number, offset not in failed_in_wave)
        outcome.ran += len(wave.runs)
        waiting = [run for i, run in enumerate(runs) if i not in ready and i not in blocked]
