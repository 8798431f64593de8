"""A single-run backfill processes many document shards in one step, so the embedder loads once."""

import json

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from fi_assets.definitions import build_definitions
from fi_assets.ingestion import ingest_shards
from fi_method.samples import wikipedia_articles
from fi_resources import tables
from fi_resources.settings import get_settings


def test_document_chunks_backfill_runs_two_shards_in_one_step(fi_home, tmp_path):
    defs = build_definitions(get_settings())
    storage = defs.resources["storage"]
    articles = wikipedia_articles(limit=2)
    with dg.instance_for_test() as instance:
        for number, article in enumerate(articles, start=1):
            path = tmp_path / f"d{number}.jsonl"
            path.write_text(json.dumps(article) + "\n")
            list(ingest_shards(storage, "documents", str(path), f"d{number}"))
            instance.add_dynamic_partitions("doc_shards", [f"d{number}"])
            assert dg.materialize(
                list(defs.assets),
                selection=["documents"],
                partition_key=f"d{number}",
                instance=instance,
                resources=defs.resources,
            ).success

        job = dg.define_asset_job("chunk_backfill", selection=["document_chunks"])
        backfill_defs = dg.Definitions(
            assets=list(defs.assets), resources=defs.resources, jobs=[job]
        )
        result = backfill_defs.resolve_job_def("chunk_backfill").execute_in_process(
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: "d1", ASSET_PARTITION_RANGE_END_TAG: "d2"},
        )
        assert result.success
        assert len([e for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]) == 1
        materialized = {e.partition for e in result.get_asset_materialization_events()}
        assert materialized == {"d1", "d2"}
        for shard in ("d1", "d2"):
            chunks = storage.read_table(tables.DOCUMENT_CHUNKS, shard)
            assert chunks.height >= 1 and chunks["vectors"].dtype.shape[0] == 6
