"""`fi materialize`'s plan over many shards: the instance queries it makes do not grow with the
number of partitions (it made one to three per partition and parent: 12,622 SQL statements for
300 shards against 1,282 for 30), and it still finds exactly the stale partitions. Counted in SQL
statements, not seconds."""

import dagster as dg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from fi_assets.cli.planning import plan_runs
from fi_assets.partitions import doc_shards
from fi_assets.versions import CODE_VERSION_TAG, DATA_VERSION_TAG

SMALL, LARGE = 30, 300


@dg.asset(partitions_def=doc_shards, code_version="1")
def source_docs() -> None: ...


@dg.asset(partitions_def=doc_shards, code_version="1", deps=[source_docs])
def chunks() -> None: ...


@dg.asset(partitions_def=doc_shards, code_version="2", deps=[chunks, source_docs])
def pairs() -> None: ...


@dg.asset(code_version="1", deps=[pairs])
def summary() -> None: ...


DEFS = dg.Definitions(assets=[source_docs, chunks, pairs, summary])


def _materialized(instance, key: str, partition: str | None, version: str) -> None:
    code_version = DEFS.resolve_asset_graph().get(dg.AssetKey(key)).code_version
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            key,
            partition=partition,
            tags={DATA_VERSION_TAG: version, CODE_VERSION_TAG: code_version},
        )
    )


def _up_to_date(shards: int) -> dg.DagsterInstance:
    """An instance where every partition of every asset was materialized in order."""
    instance = dg.DagsterInstance.ephemeral()
    keys = [f"shard_{i:04d}" for i in range(shards)]
    instance.add_dynamic_partitions(doc_shards.name, keys)
    for key in ("source_docs", "chunks", "pairs"):
        for shard in keys:
            _materialized(instance, key, shard, f"{key}-{shard}")
    _materialized(instance, "summary", None, "summary")
    return instance


def _statements(instance) -> tuple[int, list]:
    count = 0

    def counted(*_args) -> None:
        nonlocal count
        count += 1

    event.listen(Engine, "before_cursor_execute", counted)
    try:
        runs = plan_runs(DEFS, instance, None)
    finally:
        event.remove(Engine, "before_cursor_execute", counted)
    return count, runs


@pytest.fixture(scope="module")
def instances():
    return {n: _up_to_date(n) for n in (SMALL, LARGE)}


def test_a_plan_with_nothing_stale_queries_the_same_for_ten_times_the_partitions(instances):
    small, small_runs = _statements(instances[SMALL])
    large, large_runs = _statements(instances[LARGE])
    assert small_runs == [] and large_runs == []
    # Per partition, the planner used to make a query for each asset partition and two for each
    # parent partition it reads: thousands here.
    assert large <= small + 5, (small, large)


def test_one_changed_shard_plans_its_downstream_alone(instances):
    instance = instances[LARGE]
    changed = "shard_0007"
    _materialized(instance, "source_docs", changed, "edited")
    statements, runs = _statements(instance)
    assert [(run.partition_key, [k.to_user_string() for k in run.asset_keys]) for run in runs] == [
        (changed, ["chunks", "pairs"]),
        (None, ["summary"]),
    ]
    assert runs[0].reasons[0] == f"chunks: upstream source_docs[{changed}] changed"
    assert runs[1].reads_from == {0}
    # The changed partition costs a query or two of its own, not one per partition.
    assert statements < 60, statements
    # Written again with the data it had: nothing is stale any more.
    _materialized(instance, "source_docs", changed, f"source_docs-{changed}")
    assert _statements(instance)[1] == []


def test_a_new_partition_is_planned_missing(instances):
    instance = _up_to_date(3)
    instance.add_dynamic_partitions(doc_shards.name, ["late"])
    runs = plan_runs(DEFS, instance, None)
    assert [(run.partition_key, run.reasons) for run in runs] == [
        ("late", ["source_docs: missing", "chunks: missing", "pairs: missing"]),
        (None, ["summary: upstream pairs is re-materialized"]),
    ]
