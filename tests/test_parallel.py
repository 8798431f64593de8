"""Parallel runs on one machine: the Dagster instance and the model-call cache on a real PostgreSQL
(Debian's, started on loopback for the test), four document shards materialized by four worker
processes at once, and nothing lost or duplicated."""

import json
import time
from pathlib import Path

import dagster as dg
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_method.samples import wikipedia_articles
from fi_resources import tables
from fi_resources.instance import open_instance
from fi_resources.settings import get_settings
from fi_resources.storage import Storage

runner = CliRunner()
PROJECT = Path(__file__).resolve().parents[1]
SHARDS = 4
# Each shard is the opening of one article: enough passages for several pairs, while the test is
# about four processes sharing one instance and one call cache, not about long documents.
ARTICLE_OPENING_CHARS = 4000
ASSETS = ("documents", "document_chunks", "matched_pairs", "instantiated_pairs", "judged_pairs")


def test_parallel_runs_refuse_sqlite(fi_home):
    result = runner.invoke(app, ["materialize", "--workers", "2"])
    assert result.exit_code == 2 and "PostgreSQL" in result.output


def test_four_document_shards_at_once_on_postgres(fi_home, tmp_path, monkeypatch, postgres_url):
    monkeypatch.setenv("FI_DAGSTER_YAML", str(PROJECT / "deploy" / "postgres" / "dagster.yaml"))
    monkeypatch.setenv("FI_POSTGRES_URL", postgres_url)
    # The call cache too, as on a cluster: the workers' calls land in one PostgreSQL table.
    monkeypatch.setenv("FI_MODEL_CALLS_URL", postgres_url)
    get_settings.cache_clear()
    # Real questions about the four articles (Anarchism, Autism, Albedo, A): what the strict
    # rules instantiator makes pairs of is what a passage says.
    queries = tmp_path / "chat.jsonl"
    questions = (
        "what is anarchism?",
        "what is autism?",
        "what is albedo?",
        "what is the first letter of the alphabet?",
        "what are the symptoms of autism?",
        "who founded the CNT?",
        "how is albedo measured?",
    )
    queries.write_text("".join(json.dumps({"query": q}) + "\n" for q in questions))
    assert runner.invoke(app, ["ingest", "queries", str(queries)]).exit_code == 0
    shards = [f"part{i}" for i in range(SHARDS)]
    for shard, article in zip(shards, wikipedia_articles(limit=SHARDS), strict=True):
        path = tmp_path / f"{shard}.jsonl"
        text = article["text"]
        opening = text[: text.rfind("\n\n", 0, ARTICLE_OPENING_CHARS)]
        path.write_text(json.dumps({**article, "text": opening}) + "\n")
        assert runner.invoke(app, ["ingest", "documents", str(path)]).exit_code == 0

    started = time.perf_counter()
    result = runner.invoke(app, ["materialize", "judged_pairs", "--workers", str(SHARDS)])
    wall = time.perf_counter() - started
    assert result.exit_code == 0, result.output

    # Nothing lost or duplicated: one materialization per asset and shard, one row per document,
    # every grounded pair judged once, no pair id twice.
    instance = open_instance(fi_home)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    for asset in ASSETS:
        for shard in shards:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[shard]),
                limit=5,
            ).records
            assert len(records) == 1, (asset, shard)
    storage = Storage.from_settings(get_settings())
    assert not (fi_home / "model_calls.sqlite").exists()
    pairs = storage.read_all(tables.INSTANTIATED_PAIRS)
    judged = storage.read_all(tables.JUDGED_PAIRS)
    assert storage.read_all(tables.DOCUMENTS).height == SHARDS
    assert pairs.height > 0, "the shards gave pairs to judge"
    # Every worker's instantiation went through the one call cache.
    partitions = storage.connect().execute(
        "select count(distinct partition) from model_calls where role = 'instantiator'"
    )
    # One document per shard: the shards with a match are the documents with one.
    matched_shards = storage.read_all(tables.MATCHED_PAIRS)["doc_id"].n_unique()
    assert partitions.fetchone()[0] == matched_shards > 0
    assert pairs["pair_id"].n_unique() == pairs.height == judged.height
    assert set(pairs["pair_id"]) == set(judged["pair_id"])
    cached = storage.connect().execute(
        "select count(*), count(distinct cache_key) from model_calls"
    )
    calls, distinct = cached.fetchone()
    assert calls == distinct
    print(f"\n{SHARDS} shards, {SHARDS} workers on PostgreSQL: {wall:.1f}s, {pairs.height} pairs")

    again = runner.invoke(app, ["materialize", "judged_pairs", "--workers", str(SHARDS)])
    assert "everything is up to date" in again.output
