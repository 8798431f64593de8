"""The assets on real sample data: called directly, through materialize() on a test instance, and
through the `fi` CLI end to end on a temporary FI_HOME."""

import json

import dagster as dg
import polars as pl
import pytest
from typer.testing import CliRunner

from fi_assets.cli import app
from fi_assets.command import fi_command
from fi_assets.definitions import build_assets, build_resources
from fi_assets.documents import documents
from fi_assets.ingestion import ingest_shards
from fi_assets.queries import QueryFilterConfig, raw_queries
from fi_method.samples import wikipedia_articles
from fi_resources import tables
from fi_resources.models import MINILM, sentence_transformer_source
from fi_resources.settings import Settings, get_settings
from fi_resources.storage import Storage
from fi_resources.template_index import TemplateIndex, table_name_for

runner = CliRunner()
# packed_corpus reads judged_pairs: when those re-run and write the same pairs, the three recipes'
# packing runs are planned again and found up to date.
PACKING_UP_TO_DATE = "3 planned run(s) found up to date once their upstream ran"

QUERIES = [
    "What did Nikola Tesla invent in 1891?",
    "What did Nikola Tesla invent in 1891 ?",  # a duplicate once punctuation is folded
    "How does photosynthesis work in C4 plants like maize?",
    "Why did the Roman Empire fall in the 5th century?",
    "hi",  # too short
    # A verbatim AlpacaEval instruction: decontamination must drop it.
    "What are the names of some famous actors that started their careers on Broadway?",
    "Write a short story about a lighthouse keeper in Norway who finds a message in a bottle.",
]


@pytest.fixture
def queries_file(tmp_path):
    path = tmp_path / "chat_queries.jsonl"
    path.write_text("".join(json.dumps({"query": q}) + "\n" for q in QUERIES))
    return path


@pytest.fixture
def documents_file(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in wikipedia_articles(limit=3)))
    return path


def test_raw_queries_and_documents_called_directly(fi_home, queries_file, documents_file):
    storage = Storage(home=str(fi_home))
    list(ingest_shards(storage, "queries", str(queries_file), "q1"))
    list(ingest_shards(storage, "documents", str(documents_file), "d1"))

    result = raw_queries(dg.build_asset_context(partition_key="q1"), QueryFilterConfig(), storage)
    kept = storage.read_table(tables.RAW_QUERIES, "q1")
    assert kept.height == 4 and result.metadata["dagster/row_count"] == 4
    # The UI shows one partition's materialization: its figures say which partition first.
    assert next(iter(result.metadata.items())) == ("partition", "q1")
    columns = {c.name: c.type for c in result.metadata["dagster/column_schema"].columns}
    assert columns == {name: str(dtype) for name, dtype in kept.schema.items()}
    reasons = dict(
        storage.connect()
        .execute("select reason, count(*) from rejects where stage = 'raw_queries' group by 1")
        .fetchall()
    )
    assert reasons == {"duplicate": 1, "too_short": 1, "contaminated": 1}
    assert result.data_version is not None

    documents(dg.build_asset_context(partition_key="d1"), storage)
    docs = storage.read_table(tables.DOCUMENTS, "d1")
    assert docs.height == 3 and set(docs["language"]) == {"en"}
    assert docs["doc_id"].n_unique() == 3


def test_materialize_on_a_test_instance_is_idempotent(fi_home, queries_file):
    settings = get_settings()
    storage = Storage(home=str(fi_home))
    list(ingest_shards(storage, "queries", str(queries_file), "q1"))
    resources = build_resources(settings)
    selection = ["raw_queries", "instruction_templates", "template_index"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("query_shards", ["q1"])
        assets = build_assets(settings)
        first = dg.materialize(
            assets, selection=selection, partition_key="q1", instance=instance, resources=resources
        )
        assert first.success
        templates = storage.read_table(tables.INSTRUCTION_TEMPLATES, "q1")
        assert templates.height >= 3
        assert set(templates["engine"]) == {"rules"}
        index = TemplateIndex(uri=str(storage.lancedb_dir))
        table = table_name_for(settings.embedder_model)
        assert index.count(table, "q1") == templates.height

        second = dg.materialize(
            assets, selection=selection, partition_key="q1", instance=instance, resources=resources
        )
        versions = [
            {
                e.asset_key.to_user_string(): e.step_materialization_data.materialization.tags[
                    "dagster/data_version"
                ]
                for e in run.get_asset_materialization_events()
            }
            for run in (first, second)
        ]
        assert versions[0] == versions[1]
        assert index.count(table, "q1") == templates.height
        embedded = [
            run.asset_materializations_for_node("template_index")[0]
            .metadata["descriptions_embedded"]
            .value
            for run in (first, second)
        ]
        assert embedded[0] == templates["compatible_document_description"].n_unique()
        assert embedded[1] == 0  # the rerun reuses every stored vector


def test_cli_end_to_end(fi_home, queries_file, documents_file, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\nnot json\n{"query": ""}\n')
    result = runner.invoke(app, ["ingest", "queries", str(bad)])
    assert result.exit_code == 1 and "no row could be ingested" in result.output
    # The reason is in the error itself, not only in the rejects table.
    assert "no 'query', 'text', 'question', 'instruction', 'prompt' or 'qText' field" in (
        result.output
    )
    assert "Expecting value (1 row)" in result.output
    # Every reason, and what to do next.
    assert "empty_text (1 row)" in result.output
    assert f"fix the file and run {fi_command()} ingest again" in result.output

    result = runner.invoke(app, ["ingest", "queries", str(queries_file), "--shard", "chat"])
    assert result.exit_code == 0, result.output
    assert "7 accepted, 0 rejected" in result.output
    result = runner.invoke(app, ["ingest", "documents", str(documents_file)])
    assert result.exit_code == 0 and "documents shard wiki: 3 accepted" in result.output

    result = runner.invoke(app, ["materialize", "packed_corpus"])
    assert result.exit_code == 0, result.output
    assert "query_shards=chat" in result.output and "doc_shards=wiki" in result.output

    result = runner.invoke(app, ["materialize", "packed_corpus"])
    assert result.exit_code == 0 and "everything is up to date" in result.output
    # A table that is not there: the error lists every one that is, the call cache included.
    missing = runner.invoke(app, ["sql", "select * from nothing"])
    assert missing.exit_code == 1 and "judged_pairs, matched_pairs, model_calls" in missing.output

    pairs = runner.invoke(
        app,
        [
            "sql",
            (
                "select count(*) n, count(distinct doc_id) docs, min(similarity) low, "
                "max(vector_index) top, max(per_passage) most from matched_pairs, "
                "(select count(*) per_passage from matched_pairs group by chunk_id)"
            ),
        ],
    )
    n, docs, low, top, most = pairs.output.strip().splitlines()[1].split(",")
    assert int(n) > 0 and int(docs) <= 3 and float(low) > 0.17 and int(top) <= 5 and int(most) <= 6
    calibrated = runner.invoke(app, ["calibrate"])
    assert calibrated.exit_code == 0 and "proposed threshold" in calibrated.output

    # One new query shard: its own partitions run, and retrieval for the documents, nothing else.
    extra = tmp_path / "more_queries.jsonl"
    extra.write_text(json.dumps({"query": "How do glaciers in Patagonia shape valleys?"}) + "\n")
    assert runner.invoke(app, ["ingest", "queries", str(extra)]).exit_code == 0
    result = runner.invoke(app, ["materialize", "packed_corpus"])
    steps = [line.split("] ")[1] for line in result.output.splitlines() if line.startswith("[")]
    # The new template makes no kept pair of these documents: judged_pairs writes the pairs it
    # wrote before, and packing, planned again once it ran, is up to date.
    assert steps == [
        "query_shards=more_queries: raw_queries, instruction_templates, template_index",
        "doc_shards=wiki: matched_pairs, instantiated_pairs, judged_pairs",
    ]
    assert PACKING_UP_TO_DATE in result.output

    # Removing that shard removes its rows everywhere and re-runs retrieval only.
    result = runner.invoke(app, ["remove", "queries", "more_queries"])
    assert result.exit_code == 0 and "removed queries shard more_queries" in result.output
    result = runner.invoke(app, ["materialize", "packed_corpus"])
    steps = [line.split("] ")[1] for line in result.output.splitlines() if line.startswith("[")]
    assert steps == ["doc_shards=wiki: matched_pairs, instantiated_pairs, judged_pairs"]
    assert "added or removed" in result.output and PACKING_UP_TO_DATE in result.output
    remaining = runner.invoke(
        app, ["sql", "select count(*) from raw_queries where source like '%more_queries%'"]
    )
    assert remaining.output.strip().splitlines()[1] == "0"
    assert runner.invoke(app, ["remove", "queries", "more_queries"]).exit_code == 1

    result = runner.invoke(app, ["sql", "select count(*) as n from instruction_templates"])
    assert result.exit_code == 0
    header, value = result.output.strip().splitlines()
    assert header == "n" and int(value) >= 3

    # Re-ingesting a changed shard makes exactly that shard's partitions stale.
    queries_file.write_text(
        queries_file.read_text() + json.dumps({"query": "How do volcanoes in Iceland form?"}) + "\n"
    )
    assert (
        runner.invoke(app, ["ingest", "queries", str(queries_file), "--shard", "chat"]).exit_code
        == 0
    )
    result = runner.invoke(app, ["materialize", "packed_corpus"])
    assert result.exit_code == 0, result.output
    # New templates can match the documents: retrieval re-runs, document embedding does not.
    assert "query_shards=chat: raw_queries, instruction_templates, template_index" in result.output
    assert "doc_shards=wiki: matched_pairs, instantiated_pairs, judged_pairs\n" in result.output
    assert "document_chunks" not in result.output

    # Switching the embedder (here: the same MiniLM named by its path) re-runs what it feeds only.
    monkeypatch.setenv("FI_EMBEDDER_MODEL", sentence_transformer_source(MINILM))
    get_settings.cache_clear()
    result = runner.invoke(app, ["materialize", "packed_corpus"])
    assert result.exit_code == 0, result.output
    # ... in dependency order: matched_pairs after the index it reads is rebuilt.
    lines = [line for line in result.output.splitlines() if line.startswith("[")]
    assert [line.split("] ")[1] for line in lines] == [
        "doc_shards=wiki: document_chunks",
        "query_shards=chat: template_index",
        "doc_shards=wiki: matched_pairs, instantiated_pairs, judged_pairs",
    ]
    assert "code version" in result.output and "raw_queries" not in result.output
    assert PACKING_UP_TO_DATE in result.output

    result = runner.invoke(app, ["sql", "select count(*) from nowhere"])
    assert result.exit_code == 1 and "nowhere" in result.output
    assert "judged_pairs" in result.output and str(fi_home.resolve()) in result.output
    result = runner.invoke(app, ["export", "standard", str(tmp_path / "out")])
    assert result.exit_code == 2 and "export fineinstructions or non_instructional" in result.output
    result = runner.invoke(app, ["materialize", "no_such_asset"])
    assert result.exit_code == 2 and "unknown asset" in result.output


def test_inbox_sensor_registers_dropped_files(fi_home, queries_file):
    from fi_assets.ingestion import inbox_sensor

    inbox = fi_home / "inbox" / "queries"
    inbox.mkdir(parents=True)
    (inbox / "dropped.jsonl").write_text(queries_file.read_text())
    (inbox / "garbage.jsonl").write_text("not json\n{}\n")
    with dg.instance_for_test() as instance:
        storage = Storage(home=str(fi_home))
        # Shards of at most 4 queries: the 7 of the dropped file make two.
        resources = {"storage": storage, "settings": Settings(home=fi_home, shard_queries=4)}
        context = dg.build_sensor_context(instance=instance, resources=resources)
        result = inbox_sensor(context)
        assert [r.partition_keys for r in result.dynamic_partitions_requests] == [
            ["dropped-00000", "dropped-00001"]
        ]
        assert [event.partition for event in result.asset_events] == [
            "dropped-00000",
            "dropped-00001",
        ]
        shards = fi_home / "tables" / "ingested_queries"
        heights = [pl.read_parquet(shards / f"dropped-0000{i}.parquet").height for i in (0, 1)]
        assert heights == [4, 3]
        garbage_rejects = pl.read_parquet(
            fi_home / "tables" / "rejects" / "ingest_queries" / "garbage.parquet"
        )
        assert garbage_rejects["reason"].to_list() == ["malformed_json", "missing_text"]
        # Files already seen (good or not) are not ingested again until they change.
        again = inbox_sensor(
            dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources)
        )
        assert not again.asset_events and not again.dynamic_partitions_requests
